//! Optional persistence of task-list replicas in a directory (the agent's
//! state directory), so a restart keeps them.
//!
//! One file per list, `tasks-<list id hex>.x0x`:
//!
//! ```text
//! "X0XTASKS" | format version u8 | list id [32] | postcard(Vec<SignedOp>)
//! ```
//!
//! Written atomically: a temporary file in the same directory, `fsync`,
//! `rename` over the old file, `fsync` of the directory; a crash leaves the
//! old or the new replica, never a torn one. On load every operation is
//! verified again (a file edited behind the agent's back cannot inject
//! operations), so the file needs no signature of its own.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::task_list::{SignedOp, TaskList};
use crate::collab::envelope::TopicId;
use crate::collab::util::{SignatureCheck, hex, unhex};

/// First bytes of a task-list file.
pub const STORE_MAGIC: &[u8; 8] = b"X0XTASKS";
/// Version of the file format.
pub const STORE_VERSION: u8 = 1;

/// Why a replica could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a task-list file, or truncated.
    #[error("{path}: not a task-list file ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Written by a newer format.
    #[error("{path}: unsupported format version {version}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u8,
    },
}

/// What loading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Operations restored.
    pub ops: usize,
    /// Operations refused (bad signature, invalid).
    pub rejected: usize,
}

/// Task-list replicas in a directory.
#[derive(Debug, Clone)]
pub struct TaskStore {
    dir: PathBuf,
}

impl TaskStore {
    /// Use `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The file of `list`.
    pub fn path(&self, list: &TopicId) -> PathBuf {
        self.dir.join(format!("tasks-{}.x0x", hex(list.as_bytes())))
    }

    /// The lists stored.
    pub fn lists(&self) -> Result<Vec<TopicId>, StoreError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut v: Vec<TopicId> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let h = name.strip_prefix("tasks-")?.strip_suffix(".x0x")?;
                unhex::<32>(h).map(TopicId::from_bytes)
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Save `replica` atomically.
    pub fn save(&self, replica: &TaskList) -> Result<(), StoreError> {
        let path = self.path(&replica.list_id());
        let ops: Vec<&SignedOp> = replica.ops().collect();
        let mut bytes = STORE_MAGIC.to_vec();
        bytes.push(STORE_VERSION);
        bytes.extend_from_slice(replica.list_id().as_bytes());
        let bytes = postcard::to_extend(&ops, bytes).expect("encoding cannot fail");
        let tmp = self.dir.join(format!(
            ".tasks-{}.{:016x}.tmp",
            replica.list_id().short(),
            rand::random::<u64>()
        ));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Load the replica of `list`, verifying every operation; `None` if
    /// there is no file.
    pub fn load(
        &self,
        list: TopicId,
        check: SignatureCheck,
    ) -> Result<Option<(TaskList, LoadReport)>, StoreError> {
        let path = self.path(&list);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        decode(&path, &bytes, list, check).map(Some)
    }
}

fn decode(
    path: &Path,
    bytes: &[u8],
    list: TopicId,
    check: SignatureCheck,
) -> Result<(TaskList, LoadReport), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = bytes
        .strip_prefix(STORE_MAGIC.as_slice())
        .ok_or_else(|| corrupt("bad magic"))?;
    let (&version, rest) = rest.split_first().ok_or_else(|| corrupt("truncated"))?;
    if version != STORE_VERSION {
        return Err(StoreError::Version {
            path: path.to_owned(),
            version,
        });
    }
    if rest.len() < 32 || rest[..32] != list.as_bytes()[..] {
        return Err(corrupt("another list's file"));
    }
    let ops: Vec<SignedOp> = match postcard::take_from_bytes(&rest[32..]) {
        Ok((ops, [])) => ops,
        _ => return Err(corrupt("undecodable operations")),
    };
    let mut replica = TaskList::new(list, check);
    let mut report = LoadReport::default();
    for op in ops {
        match replica.apply(op) {
            Ok(_) => report.ops += 1,
            Err(_) => report.rejected += 1,
        }
    }
    Ok((replica, report))
}
