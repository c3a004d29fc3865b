//! An HTTP webhook: 2xx is success; 5xx, 408, 429, timeouts and connection failures are
//! retried; any other status goes to the dead letter at once.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::{Client, Method};

use super::{Output, Pending, Sink, SinkError};

pub struct HttpSink {
    client: Client,
    url: reqwest::Url,
    method: Method,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl HttpSink {
    pub fn new(
        client: Client,
        url: &str,
        method: Option<&str>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| SinkError::fatal(format!("http: invalid url {url:?}: {e}")))?;
        let method = Method::from_bytes(method.unwrap_or("POST").to_ascii_uppercase().as_bytes())
            .map_err(|e| SinkError::fatal(format!("http: invalid method: {e}")))?;
        Ok(Self {
            client,
            url,
            method,
            headers,
            timeout,
        })
    }
}

impl Sink for HttpSink {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn submit<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<Pending, SinkError>> {
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("x-cmq-message-id", &*out.id);
        for (key, value) in &self.headers {
            request = request.header(key, value);
        }
        for (key, value) in &out.headers {
            request = request.header(key, value.as_slice());
        }
        let request = request.body(out.value.clone());
        let pending: Pending = Box::pin(async move {
            let response = request
                .send()
                .await
                .map_err(|e| SinkError::retriable(format!("http: {e}")))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let reason = format!("http: status {status}");
            let retry =
                status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
            Err(SinkError {
                retriable: retry,
                reason,
            })
        });
        Box::pin(futures_util::future::ready(Ok(pending)))
    }
}
