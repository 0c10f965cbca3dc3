//! A small HTTP client for the CLI commands.

use serde_json::Value;

/// Talks to one pqkms service with one token.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    json: bool,
}

impl Client {
    pub fn new(addr: &str, token: Option<String>, json: bool) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(Client {
            http,
            base: addr.trim_end_matches('/').to_owned(),
            token,
            json,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, String> {
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let message = value["error"]["message"].as_str().unwrap_or("");
            Err(format!("{} {code}: {message}", status.as_u16()))
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, String> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Print the answer as JSON (`--json`) or as the summary `human` makes.
    pub fn show(&self, v: &Value, human: impl Fn(&Value) -> String) -> Result<(), String> {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
            );
        } else {
            println!("{}", human(v));
        }
        Ok(())
    }
}
