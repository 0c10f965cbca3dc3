#!/usr/bin/env python3
"""Independent check of the pqkms v1 wire formats against the golden vectors.

Written from docs/FORMATS.md alone (no Rust source was read).  For every
crates/envelope/tests/data/*_v1.json file it

  1. recomputes every `intermediates` value and the valid `encoding` from
     `inputs` and asserts they are byte-identical,
  2. opens the valid encoding and checks the recovered plaintext / key,
  3. runs every `fail_` case through the open path and asserts that it is
     rejected with the error category named in the file's `error` field,

and checks tests/data/xwing-draft06.json (public key from seed, ciphertext and
shared secret from eseed, decapsulation).

Exit status is non-zero on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from kyber_py.ml_kem import ML_KEM_768

DATA = Path(__file__).resolve().parent.parent / "data"
if len(sys.argv) > 1:  # optional: another copy of the vector folder
    DATA = Path(sys.argv[1]).resolve()


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class PqkmsError(Exception):
    """An error with one of the categories of FORMATS.md "Errors"."""

    def __init__(self, category: str):
        super().__init__(category)
        self.category = category


def bad_magic():
    return PqkmsError("BadMagic")


def unsupported_version(v: int):
    return PqkmsError(f"UnsupportedVersion({v})")


def unsupported_algorithm(a: int):
    return PqkmsError(f"UnsupportedAlgorithm({a})")


def truncated():
    return PqkmsError("Truncated")


def trailing_bytes():
    return PqkmsError("TrailingBytes")


def invalid_public_key():
    return PqkmsError("InvalidPublicKey")


def decryption():
    return PqkmsError("Decryption")


# --------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    # salt=None -> RFC 5869 default: HashLen (32) zero bytes.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def aes_gcm_seal(key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    assert len(key) == 32 and len(nonce) == 12
    return AESGCM(key).encrypt(nonce, pt, aad)


def aes_gcm_open(key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        raise decryption() from None


def x25519_base(k: bytes) -> bytes:
    """X25519(k, 9)."""
    return X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()


def x25519(k: bytes, u: bytes) -> bytes:
    """X25519(k, u).  Returns the all-zero string for a small-order u.

    OpenSSL (behind `cryptography`) refuses to return an all-zero shared
    secret and raises ValueError instead; map that back to 32 zero bytes so
    the caller makes the "all-zero ss_X is an error" decision itself.
    """
    assert len(k) == 32 and len(u) == 32
    try:
        return X25519PrivateKey.from_private_bytes(k).exchange(
            X25519PublicKey.from_public_bytes(u)
        )
    except ValueError:
        return bytes(32)


# --------------------------------------------------------------------------
# ML-KEM-768 helpers (kyber-py) + our own encapsulation-key check
# --------------------------------------------------------------------------

MLKEM_EK_LEN = 1184
MLKEM_CT_LEN = 1088
MLKEM_Q = 3329


def mlkem_ek_check(ek: bytes) -> bool:
    """FIPS 203 encapsulation-key check: type check + every 12-bit coefficient < q."""
    if len(ek) != MLKEM_EK_LEN:
        return False
    t = ek[: 384 * 3]
    for i in range(0, len(t), 3):
        b0, b1, b2 = t[i], t[i + 1], t[i + 2]
        c0 = b0 | ((b1 & 0x0F) << 8)
        c1 = (b1 >> 4) | (b2 << 4)
        if c0 >= MLKEM_Q or c1 >= MLKEM_Q:
            return False
    return True


# --------------------------------------------------------------------------
# X-Wing (draft-connolly-cfrg-xwing-kem-06)
# --------------------------------------------------------------------------

XWING_LABEL = bytes.fromhex("5c2e2f2f5e5c")  # "\.//^\"
assert XWING_LABEL == b"\\.//^\\"
XWING_PK_LEN = 1216
XWING_CT_LEN = 1120


def xwing_expand(seed: bytes):
    assert len(seed) == 32
    e = hashlib.shake_256(seed).digest(96)
    ek_m, dk_m = ML_KEM_768._keygen_internal(e[0:32], e[32:64])
    sk_x = e[64:96]
    pk_x = x25519_base(sk_x)
    return ek_m, dk_m, sk_x, pk_x


def xwing_public_key(seed: bytes) -> bytes:
    ek_m, _, _, pk_x = xwing_expand(seed)
    pk = ek_m + pk_x
    assert len(pk) == XWING_PK_LEN
    return pk


def xwing_combiner(k_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(k_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def xwing_pk_is_valid(pk: bytes) -> bool:
    """pqkms's import checks: ML-KEM ek check and pk_X not of small order."""
    if len(pk) != XWING_PK_LEN:
        return False
    ek_m, pk_x = pk[:MLKEM_EK_LEN], pk[MLKEM_EK_LEN:]
    if not mlkem_ek_check(ek_m):
        return False
    # GUESS: FORMATS.md does not say how "small-order pk_X" is detected.  Any
    # clamped scalar is a multiple of the cofactor 8, so X25519(k, u) is all
    # zero exactly when u (taken mod p, top bit masked, as RFC 7748 decodes it)
    # is a small-order point on the curve or its twist.
    probe = bytes([9]) + bytes(31)
    if x25519(probe, pk_x) == bytes(32):
        return False
    return True


def xwing_encaps(pk: bytes, eseed: bytes):
    """Deterministic encapsulation.  Returns (ss, ct)."""
    assert len(eseed) == 64
    if len(pk) != XWING_PK_LEN:
        raise invalid_public_key()
    ek_m, pk_x = pk[:MLKEM_EK_LEN], pk[MLKEM_EK_LEN:]
    if not mlkem_ek_check(ek_m):
        raise invalid_public_key()
    k_m, ct_m = ML_KEM_768._encaps_internal(ek_m, eseed[0:32])
    ek_x = eseed[32:64]
    ct_x = x25519_base(ek_x)
    ss_x = x25519(ek_x, pk_x)
    if ss_x == bytes(32):
        raise invalid_public_key()
    ss = xwing_combiner(k_m, ss_x, ct_x, pk_x)
    ct = ct_m + ct_x
    assert len(ct) == XWING_CT_LEN and len(ct_m) == MLKEM_CT_LEN
    return ss, ct


def xwing_decaps(seed: bytes, ct: bytes) -> bytes:
    if len(ct) != XWING_CT_LEN:
        raise decryption()
    ek_m, dk_m, sk_x, pk_x = xwing_expand(seed)
    ct_m, ct_x = ct[:MLKEM_CT_LEN], ct[MLKEM_CT_LEN:]
    try:
        k_m = ML_KEM_768.decaps(dk_m, ct_m)
    except ValueError:
        raise decryption() from None
    ss_x = x25519(sk_x, ct_x)
    if ss_x == bytes(32):
        raise decryption()
    return xwing_combiner(k_m, ss_x, ct_x, pk_x)


# --------------------------------------------------------------------------
# Identifiers, context digest
# --------------------------------------------------------------------------

ALG_XWING_HKDF_AESGCM = 0x01
VERSION_1 = 0x01


def key_ref(tenant: bytes, key: bytes, version: int) -> bytes:
    assert len(tenant) == 16 and len(key) == 16
    return tenant + key + u32(version)


def context_digest(ctx: dict[str, str]) -> bytes:
    items = sorted(
        ((k.encode("utf-8"), v.encode("utf-8")) for k, v in ctx.items()),
        key=lambda kv: kv[0],
    )
    h = hashlib.sha256()
    h.update(b"pqkms/v1/context")
    h.update(u32(len(items)))
    for k, v in items:
        h.update(u32(len(k)) + k + u32(len(v)) + v)
    return h.digest()


def parse_fixed(blob: bytes, magic: bytes, total: int, has_alg: bool = True) -> None:
    """Shape checks for a fixed-length format.

    GUESS: the order of the checks when several apply at once is not specified.
    We follow the order listed in section 1 ("parse (length exactly 1254,
    magic, version, algorithm)"): length first, then magic, version, algorithm.
    """
    if len(blob) < total:
        raise truncated()
    if len(blob) > total:
        raise trailing_bytes()
    if blob[: len(magic)] != magic:
        raise bad_magic()
    if blob[len(magic)] != VERSION_1:
        raise unsupported_version(blob[len(magic)])
    if has_alg and blob[len(magic) + 1] != ALG_XWING_HKDF_AESGCM:
        raise unsupported_algorithm(blob[len(magic) + 1])


# --------------------------------------------------------------------------
# 1. Wrapped data key (PQWK)
# --------------------------------------------------------------------------

PQWK = b"PQWK"
PQWK_LEN = 1254


def wrapped_key_header(ref: bytes, digest: bytes) -> bytes:
    h = PQWK + bytes([VERSION_1, ALG_XWING_HKDF_AESGCM]) + ref + digest
    assert len(h) == 74
    return h


def wrapped_key_kek(ss: bytes, header: bytes) -> bytes:
    return hkdf(ss, b"pqkms/v1/wrapped-data-key" + header, 32)


def wrap_data_key(pk, ref, ctx, data_key, eseed, nonce):
    """Returns (blob, intermediates)."""
    digest = context_digest(ctx)
    header = wrapped_key_header(ref, digest)
    ss, ct = xwing_encaps(pk, eseed)
    kek = wrapped_key_kek(ss, header)
    sealed = aes_gcm_seal(kek, nonce, header, data_key)
    blob = header + ct + nonce + sealed
    assert len(blob) == PQWK_LEN
    return blob, {
        "context_digest": digest,
        "header": header,
        "kek": kek,
        "xwing_shared_secret": ss,
    }


def parse_wrapped_key(blob: bytes):
    parse_fixed(blob, PQWK, PQWK_LEN)
    return {
        "header": blob[0:74],
        "ref": blob[6:42],
        "digest": blob[42:74],
        "ct": blob[74:1194],
        "nonce": blob[1194:1206],
        "sealed": blob[1206:1254],
    }


def open_wrapped_key(blob: bytes, seed: bytes, ref: bytes, ctx: dict) -> bytes:
    p = parse_wrapped_key(blob)
    # Everything below is reported as the single opaque Decryption.
    if p["ref"] != ref:
        raise decryption()
    if p["digest"] != context_digest(ctx):
        raise decryption()
    ss = xwing_decaps(seed, p["ct"])
    kek = wrapped_key_kek(ss, p["header"])
    dk = aes_gcm_open(kek, p["nonce"], p["header"], p["sealed"])
    if len(dk) != 32:
        raise decryption()
    return dk


# --------------------------------------------------------------------------
# 2. Sealed tenant private key (PQSK)
# --------------------------------------------------------------------------

PQSK = b"PQSK"
PQSK_LEN = 106


def root_seal_key(root_key: bytes) -> bytes:
    return hkdf(root_key, b"pqkms/v1/root-seal-key", 32)


def seal_tenant_key(root_key, root_version, ref, seed, nonce):
    sk = root_seal_key(root_key)
    aad = PQSK + bytes([VERSION_1, ALG_XWING_HKDF_AESGCM]) + u32(root_version) + ref
    assert len(aad) == 46
    blob = aad + nonce + aes_gcm_seal(sk, nonce, aad, seed)
    assert len(blob) == PQSK_LEN
    return blob, {"seal_key": sk}


def open_sealed_key(blob, root_key, root_version, ref) -> bytes:
    parse_fixed(blob, PQSK, PQSK_LEN)
    # GUESS: the opener also knows which root key version it holds and
    # compares it (the AAD would catch a change anyway).
    if struct.unpack(">I", blob[6:10])[0] != root_version:
        raise decryption()
    if blob[10:46] != ref:
        raise decryption()
    seed = aes_gcm_open(root_seal_key(root_key), blob[46:58], blob[0:46], blob[58:106])
    if len(seed) != 32:
        raise decryption()
    return seed


# --------------------------------------------------------------------------
# 3. Exported tenant public key (PQPK)
# --------------------------------------------------------------------------

PQPK = b"PQPK"
PQPK_LEN = 1258


def export_public_key(ref: bytes, pk: bytes) -> bytes:
    blob = PQPK + bytes([VERSION_1, ALG_XWING_HKDF_AESGCM]) + ref + pk
    assert len(blob) == PQPK_LEN
    return blob


def fingerprint(blob: bytes) -> str:
    return hashlib.sha256(blob).digest()[:16].hex()


def import_public_key(blob: bytes):
    parse_fixed(blob, PQPK, PQPK_LEN)
    pk = blob[42:1258]
    if not xwing_pk_is_valid(pk):
        raise invalid_public_key()
    return blob[6:42], pk, fingerprint(blob)


# --------------------------------------------------------------------------
# 4. Field ciphertext (PF)
# --------------------------------------------------------------------------

PF = b"PF"
PF_OVERHEAD = 2 + 1 + 8 + 12 + 16  # 39


def field_keys(data_key: bytes):
    okm = hkdf(data_key, b"pqkms/v1/field", 40)
    return okm[0:32], okm[32:40]


def encrypt_field(data_key, nonce, ad, pt):
    fk, kid = field_keys(data_key)
    hdr = PF + bytes([VERSION_1]) + kid
    blob = hdr + nonce + aes_gcm_seal(fk, nonce, hdr + ad, pt)
    assert len(blob) == len(pt) + PF_OVERHEAD
    return blob, {"field_key": fk, "data_key_id": kid}


def decrypt_field(blob, data_key, ad) -> bytes:
    # GUESS: variable-length format: minimum length first (Truncated), then
    # magic, then version (no algorithm byte in this format).
    if len(blob) < PF_OVERHEAD:
        raise truncated()
    if blob[0:2] != PF:
        raise bad_magic()
    if blob[2] != VERSION_1:
        raise unsupported_version(blob[2])
    fk, kid = field_keys(data_key)
    # GUESS: the spec does not say whether the opener compares the id
    # explicitly; it is covered by the AAD either way.
    if blob[3:11] != kid:
        raise decryption()
    return aes_gcm_open(fk, blob[11:23], blob[0:11] + ad, blob[23:])


# --------------------------------------------------------------------------
# 5. Self-contained envelope (PQEV)
# --------------------------------------------------------------------------

PQEV = b"PQEV"


def content_key(data_key: bytes) -> bytes:
    return hkdf(data_key, b"pqkms/v1/envelope", 32)


def seal_envelope(wrapped: bytes, data_key: bytes, nonce: bytes, pt: bytes):
    ck = content_key(data_key)
    hdr = PQEV + bytes([VERSION_1]) + u16(len(wrapped)) + wrapped
    return hdr + nonce + aes_gcm_seal(ck, nonce, hdr, pt), {"content_key": ck}


def open_envelope(blob, seed, ref, ctx) -> bytes:
    # GUESS (order): fixed 7-byte prefix, magic, version, then the w-dependent
    # minimum length, then the inner wrapped key is parsed from exactly w bytes
    # with its own parser, so w != 1254 surfaces as the inner parser's
    # Truncated / TrailingBytes.
    if len(blob) < 7:
        raise truncated()
    if blob[0:4] != PQEV:
        raise bad_magic()
    if blob[4] != VERSION_1:
        raise unsupported_version(blob[4])
    w = struct.unpack(">H", blob[5:7])[0]
    if len(blob) < 7 + w + 12 + 16:
        raise truncated()
    wrapped = blob[7 : 7 + w]
    parse_wrapped_key(wrapped)  # shape errors of the inner blob propagate
    data_key = open_wrapped_key(wrapped, seed, ref, ctx)
    return aes_gcm_open(
        content_key(data_key), blob[7 + w : 19 + w], blob[0 : 7 + w], blob[19 + w :]
    )


# --------------------------------------------------------------------------
# Checker
# --------------------------------------------------------------------------


class Checker:
    def __init__(self):
        self.failures: list[str] = []
        self.vectors = 0
        self.fail_cases = 0
        self.comparisons = 0

    def eq(self, what: str, got, want):
        self.comparisons += 1
        if isinstance(got, bytes):
            got = got.hex()
        if isinstance(want, bytes):
            want = want.hex()
        if got != want:
            self.failures.append(f"MISMATCH {what}:\n   got  {got}\n   want {want}")

    def intermediates(self, fname, computed: dict, want: dict):
        for k in want:
            if k not in computed:
                self.failures.append(f"{fname}: intermediate {k!r} not computed by this implementation")
        for k, v in computed.items():
            if k in want:
                self.eq(f"{fname}: intermediates.{k}", v, want[k])
            else:
                self.failures.append(f"{fname}: computed {k!r} but file has no such intermediate")

    def expect_reject(self, fname, case, fn):
        self.fail_cases += 1
        name = case["name"]
        if not name.startswith("fail_"):
            self.failures.append(f"{fname}: case name {name!r} does not start with fail_")
        try:
            fn(bytes.fromhex(case["encoding"]))
        except PqkmsError as e:
            self.eq(f"{fname}: {name} error category", e.category, case["error"])
            return
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"{fname}: {name} raised non-pqkms exception {type(e).__name__}: {e}")
            return
        self.failures.append(f"{fname}: {name} was ACCEPTED (expected {case['error']})")

    def expect_open_ok(self, what, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"{what}: valid encoding rejected: {type(e).__name__}: {e}")
            return None


def load(name):
    with open(DATA / name, encoding="utf-8") as f:
        return json.load(f)


def H(s: str) -> bytes:
    return bytes.fromhex(s)


def fixed_inputs_check(c: Checker, fname: str, inp: dict):
    """FORMATS.md 'Fixed inputs' paragraph vs. the inputs actually in the file."""
    if "tenant" in inp:
        c.eq(f"{fname}: fixed tenant id", inp["tenant"], "11" * 16)
    if "key" in inp:
        c.eq(f"{fname}: fixed key id", inp["key"], "22" * 16)
    if "version" in inp:
        c.eq(f"{fname}: fixed key version", inp["version"], 3)
    if "xwing_seed" in inp:
        c.eq(f"{fname}: fixed X-Wing seed", inp["xwing_seed"], bytes(range(0x00, 0x20)).hex())
    if "root_key" in inp:
        c.eq(f"{fname}: fixed root key", inp["root_key"], bytes(range(0x40, 0x60)).hex())
    if "root_version" in inp:
        c.eq(f"{fname}: fixed root version", inp["root_version"], 7)
    if "data_key" in inp:
        c.eq(f"{fname}: fixed data key", inp["data_key"], bytes(range(0xA0, 0xC0)).hex())


def check_xwing(c: Checker):
    fname = "xwing-draft06.json"
    d = load(fname)
    for i, v in enumerate(d["vectors"]):
        c.vectors += 1
        seed, eseed = H(v["seed"]), H(v["eseed"])
        c.eq(f"{fname}[{i}] sk == seed", v["sk"], v["seed"])
        pk = xwing_public_key(seed)
        c.eq(f"{fname}[{i}] pk", pk, v["pk"])
        ss, ct = xwing_encaps(H(v["pk"]), eseed)
        c.eq(f"{fname}[{i}] ct", ct, v["ct"])
        c.eq(f"{fname}[{i}] ss (encaps)", ss, v["ss"])
        c.eq(f"{fname}[{i}] ss (decaps)", xwing_decaps(H(v["sk"]), H(v["ct"])), v["ss"])
        c.eq(f"{fname}[{i}] pk passes import checks", xwing_pk_is_valid(pk), True)


def check_context(c: Checker):
    fname = "context_v1.json"
    d = load(fname)
    for i, case in enumerate(d["cases"]):
        c.vectors += 1
        c.eq(f"{fname}[{i}] digest of {case['context']!r}", context_digest(case["context"]), case["digest"])


def check_wrapped(c: Checker):
    fname = "wrapped_key_v1.json"
    d = load(fname)
    c.vectors += 1
    inp = d["inputs"]
    fixed_inputs_check(c, fname, inp)
    seed = H(inp["xwing_seed"])
    ref = key_ref(H(inp["tenant"]), H(inp["key"]), inp["version"])
    pk = xwing_public_key(seed)
    c.eq(f"{fname}: inputs.xwing_public_key == expand(xwing_seed)", pk, inp["xwing_public_key"])
    blob, inter = wrap_data_key(
        H(inp["xwing_public_key"]), ref, inp["context"], H(inp["data_key"]), H(inp["xwing_eseed"]), H(inp["nonce"])
    )
    c.intermediates(fname, inter, d["intermediates"])
    c.eq(f"{fname}: encoding", blob, d["encoding"])
    got = c.expect_open_ok(fname, lambda: open_wrapped_key(H(d["encoding"]), seed, ref, inp["context"]))
    if got is not None:
        c.eq(f"{fname}: opened data key", got, inp["data_key"])
    for case in d["fail"]:
        c.expect_reject(fname, case, lambda b: open_wrapped_key(b, seed, ref, inp["context"]))
    return d


def check_sealed(c: Checker):
    fname = "sealed_key_v1.json"
    d = load(fname)
    c.vectors += 1
    inp = d["inputs"]
    fixed_inputs_check(c, fname, inp)
    ref = key_ref(H(inp["tenant"]), H(inp["key"]), inp["version"])
    root_key, root_version = H(inp["root_key"]), inp["root_version"]
    blob, inter = seal_tenant_key(root_key, root_version, ref, H(inp["xwing_seed"]), H(inp["nonce"]))
    c.intermediates(fname, inter, d["intermediates"])
    c.eq(f"{fname}: encoding", blob, d["encoding"])
    got = c.expect_open_ok(fname, lambda: open_sealed_key(H(d["encoding"]), root_key, root_version, ref))
    if got is not None:
        c.eq(f"{fname}: opened seed", got, inp["xwing_seed"])
    for case in d["fail"]:
        c.expect_reject(fname, case, lambda b: open_sealed_key(b, root_key, root_version, ref))


def check_public_key(c: Checker):
    fname = "public_key_v1.json"
    d = load(fname)
    c.vectors += 1
    inp = d["inputs"]
    fixed_inputs_check(c, fname, inp)
    ref = key_ref(H(inp["tenant"]), H(inp["key"]), inp["version"])
    pk = xwing_public_key(H(inp["xwing_seed"]))
    c.intermediates(fname, {"xwing_public_key": pk}, d["intermediates"])
    blob = export_public_key(ref, pk)
    c.eq(f"{fname}: encoding", blob, d["encoding"])
    c.eq(f"{fname}: fingerprint", fingerprint(blob), d["fingerprint"])
    got = c.expect_open_ok(fname, lambda: import_public_key(H(d["encoding"])))
    if got is not None:
        c.eq(f"{fname}: imported key reference", got[0], ref)
        c.eq(f"{fname}: imported public key", got[1], pk)
        c.eq(f"{fname}: imported fingerprint", got[2], d["fingerprint"])
    for case in d["fail"]:
        c.expect_reject(fname, case, import_public_key)
        # The encapsulation side must refuse the same bad keys (FORMATS.md:
        # "an all-zero ss_X ... is an error on both sides").
        if case["error"] == "InvalidPublicKey":
            bad_pk = H(case["encoding"])[42:]
            try:
                xwing_encaps(bad_pk, bytes(range(64)))
                c.failures.append(f"{fname}: {case['name']}: encaps to the bad key succeeded")
            except PqkmsError as e:
                c.eq(f"{fname}: {case['name']} encaps error", e.category, "InvalidPublicKey")


def check_field(c: Checker):
    fname = "field_v1.json"
    d = load(fname)
    c.vectors += 1
    inp = d["inputs"]
    fixed_inputs_check(c, fname, inp)
    dk, ad = H(inp["data_key"]), H(inp["associated_data"])
    blob, inter = encrypt_field(dk, H(inp["nonce"]), ad, H(inp["plaintext"]))
    c.intermediates(fname, inter, d["intermediates"])
    c.eq(f"{fname}: encoding", blob, d["encoding"])
    got = c.expect_open_ok(fname, lambda: decrypt_field(H(d["encoding"]), dk, ad))
    if got is not None:
        c.eq(f"{fname}: opened plaintext", got, inp["plaintext"])
    for case in d["fail"]:
        c.expect_reject(fname, case, lambda b: decrypt_field(b, dk, ad))


def check_envelope(c: Checker, wrapped_doc: dict):
    fname = "envelope_v1.json"
    d = load(fname)
    c.vectors += 1
    inp = d["inputs"]
    fixed_inputs_check(c, fname, inp)
    # inputs.wrapped_key is the prose "the encoding of wrapped_key_v1.json
    # (same inputs)": the seed / key reference needed to open come from there.
    winp = wrapped_doc["inputs"]
    c.eq(f"{fname}: data key same as wrapped_key_v1.json", inp["data_key"], winp["data_key"])
    c.eq(f"{fname}: context same as wrapped_key_v1.json", inp["context"], winp["context"])
    wrapped = H(wrapped_doc["encoding"])
    seed = H(winp["xwing_seed"])
    ref = key_ref(H(winp["tenant"]), H(winp["key"]), winp["version"])
    blob, inter = seal_envelope(wrapped, H(inp["data_key"]), H(inp["nonce"]), H(inp["plaintext"]))
    c.intermediates(fname, inter, d["intermediates"])
    c.eq(f"{fname}: encoding", blob, d["encoding"])
    got = c.expect_open_ok(fname, lambda: open_envelope(H(d["encoding"]), seed, ref, inp["context"]))
    if got is not None:
        c.eq(f"{fname}: opened plaintext", got, inp["plaintext"])
    for case in d["fail"]:
        c.expect_reject(fname, case, lambda b: open_envelope(b, seed, ref, inp["context"]))


def main() -> int:
    t0 = time.perf_counter()
    c = Checker()
    check_xwing(c)
    check_context(c)
    wrapped_doc = check_wrapped(c)
    check_sealed(c)
    check_public_key(c)
    check_field(c)
    check_envelope(c, wrapped_doc)

    expected_files = {
        "context_v1.json", "envelope_v1.json", "field_v1.json", "public_key_v1.json",
        "sealed_key_v1.json", "wrapped_key_v1.json",
    }
    present = {p.name for p in DATA.glob("*_v1.json")}
    if present != expected_files:
        c.failures.append(f"vector files changed: unchecked {sorted(present - expected_files)}, "
                          f"missing {sorted(expected_files - present)}")

    dt = time.perf_counter() - t0
    if c.failures:
        for f in c.failures:
            print(f)
        print(f"independent check: {c.vectors} vectors, {c.fail_cases} fail_ cases, "
              f"{len(c.failures)} FAILED ({dt:.2f}s)")
        return 1
    print(f"independent check: {c.vectors} vectors, {c.fail_cases} fail_ cases, "
          f"{c.comparisons} comparisons, all OK ({dt:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
