//! (stub until the config branch merges)
use std::path::PathBuf;
use std::time::Duration;
use url::Url;
#[derive(Debug, Clone)]
pub enum ClusterState {
    New,
    Existing,
}
#[derive(Debug, Clone)]
pub enum AutoCompaction {
    Periodic(Duration),
    Revision(i64),
}
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: Vec<(String, Url)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: u64,
    pub max_txn_ops: usize,
    pub snapshot_count: u64,
    pub auto_compaction: Option<AutoCompaction>,
    pub log_level: String,
}
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Help(String),
    #[error("{0}")]
    Invalid(String),
}
impl Config {
    pub fn load<I, T>(
        _args: I,
        _env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Err(ConfigError::Invalid("stub".into()))
    }
    pub fn min_lease_ttl(&self) -> i64 {
        2
    }
}
