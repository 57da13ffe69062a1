//! HTTP/2 connections shared by many clients, as etcd's benchmark does with
//! `--conns` and `--clients`: each connection is one tonic [`Channel`]
//! (one TCP connection, multiplexing concurrent streams), and client `i`
//! uses connection `i % conns`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::BenchError;

/// The connections of one run.
#[derive(Clone, Debug)]
pub struct Pool {
    /// One channel per connection; clones share the connection.
    channels: Vec<Channel>,
}

/// `127.0.0.1:2379` → `http://127.0.0.1:2379` (etcd's `--endpoints` takes both).
pub fn normalise_endpoint(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

impl Pool {
    /// Opens `conns` connections, spread round-robin over `endpoints`.
    pub async fn connect(endpoints: &[String], conns: usize) -> Result<Pool, BenchError> {
        if endpoints.is_empty() {
            return Err(BenchError::Usage("no endpoint given".into()));
        }
        let mut channels = Vec::with_capacity(conns.max(1));
        for i in 0..conns.max(1) {
            let url = normalise_endpoint(&endpoints[i % endpoints.len()]);
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| BenchError::Usage(format!("endpoint {url}: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| BenchError::Connect(format!("{url}: {e}")))?;
            channels.push(channel);
        }
        Ok(Pool { channels })
    }

    /// The connection client `i` uses.
    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}
