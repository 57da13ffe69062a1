//! Which engine holds a member's applied state (`--backend-engine`), and
//! the data dir's memory of it.
//!
//! ```text
//! member/state.engine   `sled` or `fjall`: the engine that wrote this data dir
//! member/state*         sled's databases (see `mvcc::defrag`)
//! member/state-fjall/   fjall's keyspace
//! ```
//!
//! A data dir is opened only by the engine that wrote it: the other one
//! would find no data and start over as an empty member. A data dir from
//! before `state.engine` existed with a sled database is sled's. Without
//! `--backend-engine`, a member opens its data dir with the engine that
//! wrote it, and a new data dir gets the default, fjall (chosen by
//! measurement: docs/storage.md); the flag is needed only to create a new
//! data dir with sled, and a flag that contradicts the data dir stops
//! start-up.

use std::path::Path;
use std::sync::Arc;

use super::backend::Backend;
use super::defrag::DefraggableSled;
use super::fjall_backend::FjallBackend;
use crate::error::StorageError;

/// The file naming the engine of a data dir.
const MARKER: &str = "state.engine";
/// fjall's directory under `member/`.
pub const FJALL_DIR: &str = "state-fjall";

/// A state-store engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// sled 0.34, rewritten into a fresh database by a defragment.
    Sled,
    /// fjall 2 (LSM tree), major-compacted by a defragment. The default
    /// for new data dirs.
    #[default]
    Fjall,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Fjall => "fjall",
        }
    }

    /// The flag's value: `sled` or `fjall`.
    pub fn parse(text: &str) -> Result<Engine, String> {
        match text.trim() {
            "sled" => Ok(Engine::Sled),
            "fjall" => Ok(Engine::Fjall),
            other => Err(format!("must be sled or fjall, not {other:?}")),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The engine that wrote `member_dir`, if any wrote it.
fn written_by(member_dir: &Path) -> Result<Option<Engine>, StorageError> {
    match std::fs::read_to_string(member_dir.join(MARKER)) {
        Ok(text) => Engine::parse(&text).map(Some).map_err(|e| {
            StorageError::Io(std::io::Error::other(format!(
                "{}: {e}",
                member_dir.join(MARKER).display()
            )))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if member_dir.join(FJALL_DIR).exists() {
                Ok(Some(Engine::Fjall))
            } else if member_dir.join("state").exists() || member_dir.join("state.current").exists()
            {
                Ok(Some(Engine::Sled))
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the marker durably (temporary file, fsync, rename, fsync of the
/// directory).
fn remember(member_dir: &Path, engine: Engine) -> Result<(), StorageError> {
    super::replace_file_durably(member_dir, MARKER, engine.name().as_bytes())
}

/// Opens the member's state store: with the engine that wrote
/// `member_dir`, or for a new one with `requested` (`--backend-engine`) or
/// else the default. A `requested` engine that is not the one that wrote
/// the data dir is refused.
pub fn open_state(
    member_dir: &Path,
    requested: Option<Engine>,
    cache_bytes: u64,
) -> Result<Arc<dyn Backend>, StorageError> {
    let found = written_by(member_dir)?;
    let engine = requested.or(found).unwrap_or_default();
    match found {
        Some(found) if found != engine => {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "the data dir {} was written by the {found} state engine, not {engine}: \
                 start with --backend-engine {found}, or move the data dir away \
                 (or restore a snapshot into a new one) to change engines",
                member_dir.parent().unwrap_or(member_dir).display()
            ))));
        }
        _ if !member_dir.join(MARKER).exists() => remember(member_dir, engine)?,
        _ => {}
    }
    tracing::info!(engine = engine.name(), "opening the state store");
    Ok(match engine {
        Engine::Sled => Arc::new(DefraggableSled::open(member_dir, cache_bytes)?),
        Engine::Fjall => Arc::new(FjallBackend::open(
            &member_dir.join(FJALL_DIR),
            cache_bytes,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::WriteBatch;

    #[test]
    fn a_data_dir_is_opened_only_by_the_engine_that_wrote_it() {
        for (first, other) in [(Engine::Sled, Engine::Fjall), (Engine::Fjall, Engine::Sled)] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let b = open_state(dir.path(), Some(first), 8 << 20).expect("open");
                let mut wb = WriteBatch::new();
                wb.put(&b"k"[..], &b"v"[..]);
                b.write_batch(wb).expect("write");
                b.flush().expect("flush");
            }
            let err = match open_state(dir.path(), Some(other), 8 << 20) {
                Ok(_) => panic!("{other} opened a data dir written by {first}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&format!("written by the {first} state engine"))
                    && err.contains(&format!("--backend-engine {first}")),
                "{err}"
            );
            // Without the flag, the data dir's own engine opens it.
            let reopen = || open_state(dir.path(), None, 8 << 20);
            // sled lets go of its lock from background threads.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let b = loop {
                match reopen() {
                    Ok(b) => break b,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    Err(e) => panic!("{first} did not reopen: {e}"),
                }
            };
            assert_eq!(b.get(b"k").expect("get"), Some(b"v".to_vec()), "{first}");
        }
    }

    #[test]
    fn an_unmarked_sled_data_dir_is_sleds() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(crate::mvcc::SledBackend::open_with_cache(
            &dir.path().join("state"),
            8 << 20,
        ));
        assert_eq!(written_by(dir.path()).expect("read"), Some(Engine::Sled));
        assert!(open_state(dir.path(), Some(Engine::Fjall), 8 << 20).is_err());
    }

    #[test]
    fn a_new_data_dir_gets_fjall_unless_sled_is_asked_for() {
        for (requested, expected) in [(None, Engine::Fjall), (Some(Engine::Sled), Engine::Sled)] {
            let dir = tempfile::tempdir().expect("tempdir");
            drop(open_state(dir.path(), requested, 8 << 20).expect("open"));
            assert_eq!(
                written_by(dir.path()).expect("read"),
                Some(expected),
                "{requested:?}"
            );
        }
    }

    #[test]
    fn engine_names() {
        assert_eq!(Engine::parse("fjall"), Ok(Engine::Fjall));
        assert_eq!(Engine::parse(" sled\n"), Ok(Engine::Sled));
        assert!(Engine::parse("rocksdb").is_err());
        assert_eq!(Engine::default().to_string(), "fjall");
    }
}
