//! A bounded map with first-in-first-out eviction, shared by the in-memory caches (unsealed keys,
//! store rows). Values are `Arc`s so a reader keeps what it got while the map moves on; dropping
//! the last `Arc` of a secret zeroizes it.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

/// At most `capacity` entries; inserting past it evicts the oldest insertion. O(1) per insert and
/// lookup; removal of one key is O(n) in the insertion order (removals are rare: state changes).
pub struct Bounded<K, V> {
    capacity: usize,
    order: VecDeque<K>,
    entries: HashMap<K, Arc<V>>,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// An empty map holding up to `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Bounded {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            entries: HashMap::new(),
        }
    }

    /// The entry for `k`, looked up by any borrowed form of the key (`&str` for `String` keys: no
    /// owned key is built for a hit).
    pub fn get<Q>(&self, k: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(k).cloned()
    }

    /// Insert or replace; a replacement keeps its place in the eviction order.
    pub fn insert(&mut self, k: K, v: Arc<V>) {
        if self.entries.insert(k.clone(), v).is_some() {
            return;
        }
        self.order.push_back(k);
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The capacity it was made with.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Remove `k` if present.
    pub fn remove<Q>(&mut self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.entries.remove(k).is_some() {
            self.order.retain(|o| o.borrow() != k);
        }
    }

    /// Remove every entry whose value matches.
    pub fn remove_where(&mut self, mut matches: impl FnMut(&V) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|_, v| !matches(v));
        if self.entries.len() != before {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

/// A poisoned cache lock only means another request panicked mid-insert; the map is still
/// consistent (inserts are single operations), so keep serving.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_evicts_oldest_first() {
        let mut b: Bounded<(String, i64), u32> = Bounded::new(2);
        b.insert(("a".into(), 1), Arc::new(1));
        b.insert(("b".into(), 1), Arc::new(2));
        b.insert(("a".into(), 1), Arc::new(3));
        assert_eq!(b.len(), 2);
        b.insert(("c".into(), 1), Arc::new(4));
        assert_eq!(b.len(), 2);
        assert!(b.get(&("a".into(), 1)).is_none());
        assert_eq!(b.get(&("c".into(), 1)).as_deref(), Some(&4));
    }

    #[test]
    fn remove_where_keeps_order_consistent() {
        let mut b: Bounded<u32, u32> = Bounded::new(3);
        for i in 0..3 {
            b.insert(i, Arc::new(i * 10));
        }
        b.remove_where(|v| *v == 10);
        assert_eq!(b.len(), 2);
        assert!(b.get(&1).is_none());
        // Two more inserts evict 0 (oldest), not 2.
        b.insert(3, Arc::new(30));
        b.insert(4, Arc::new(40));
        assert!(b.get(&0).is_none());
        assert!(b.get(&2).is_some() && b.get(&4).is_some());
        b.clear();
        assert!(b.is_empty());
    }
}
