//! A small blocking client of the coordinator's HTTP API: endpoint and token resolution, JSON in and out, and
//! errors that carry the server's `X-Error-Message`.

use anyhow::{Context, anyhow};
use serde_json::Value;

/// Where the cluster is and who is asking.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Client {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.agent.get(&format!("{}{path}", self.endpoint));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        read(request.call(), "GET", path)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send("POST", path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send("PUT", path, body)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.agent.delete(&format!("{}{path}", self.endpoint));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        read(request.call(), "DELETE", path)
    }

    /// Whether the cluster's blob store has the blob.
    pub fn has_blob(&self, digest: &str) -> anyhow::Result<bool> {
        let path = format!("/api/blobs/{digest}");
        let mut request = self.agent.head(&format!("{}{path}", self.endpoint));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = request.call().with_context(|| format!("HEAD {path}"))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            code => Err(anyhow!("HEAD {path}: HTTP {code}")),
        }
    }

    /// Uploads a blob; returns once a quorum of coordinators holds it. No overall time limit: blobs can be large.
    pub fn put_blob(
        &self,
        digest: &str,
        size: u64,
        body: impl std::io::Read + 'static,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/blobs/{digest}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        let mut request = agent
            .put(&format!("{}{path}", self.endpoint))
            .header("Content-Length", &size.to_string());
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        read(
            request.send(ureq::SendBody::from_owned_reader(body)),
            "PUT",
            &path,
        )
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.endpoint);
        let mut request = match method {
            "PUT" => self.agent.put(&url),
            _ => self.agent.post(&url),
        };
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        read(request.send_json(body), method, path)
    }
}

fn read(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    method: &str,
    path: &str,
) -> anyhow::Result<Value> {
    let mut response = result.with_context(|| format!("{method} {path}"))?;
    let status = response.status();
    let header = response
        .headers()
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .or(header)
            .unwrap_or(text);
        return Err(anyhow!(
            "{method} {path}: HTTP {}: {message}",
            status.as_u16()
        ));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: the answer is not JSON"))
}
