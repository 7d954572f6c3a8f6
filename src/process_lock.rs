//! One embedded process per data file. With no Redis configured, the stock
//! ledger, the gate counters, sessions and tokens live in the process's
//! memory: a second `seckill serve` on the same SQLite file would warm a
//! ledger of its own from the same stock and sell every unit again (the
//! orders are committed before the DB deduction refuses the second sale).
//! So such a process holds an exclusive lock on `<database file>.lock` for
//! its whole life, and a second one stops at start-up with an error that
//! says what to do. The lock is the kernel's (`flock`): a process that dies,
//! however it dies, gives it back.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use anyhow::Context as _;

use crate::config::{Config, DatabaseBackend};

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    path: PathBuf,
}

impl DataLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock when `config` keeps the sale's state in this process (no
/// Redis) on a SQLite file; `None` when there is nothing to guard (Redis
/// holds the shared state, or the database is in memory or MySQL).
pub fn claim(config: &Config) -> anyhow::Result<Option<DataLock>> {
    if config.redis_url.is_some() {
        return Ok(None);
    }
    let DatabaseBackend::Sqlite(url) = config.database()? else {
        return Ok(None);
    };
    let Some(db) = sqlite_file(&url)? else {
        return Ok(None);
    };
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let path = db.with_file_name(name);
    claim_path(&path).map(Some)
}

/// The database file a SQLite URL names; `None` for an in-memory one.
fn sqlite_file(url: &str) -> anyhow::Result<Option<PathBuf>> {
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).with_context(|| {
        format!("SECKILL_DATABASE_URL is not a SQLite URL sqlx reads ({url:?})")
    })?;
    let name = opts.get_filename().to_string_lossy();
    // sqlx names an in-memory database `file:sqlx-in-memory-<n>`; an empty
    // name is SQLite's private temporary database.
    if name.is_empty() || name.starts_with("file:sqlx-in-memory-") || url.contains("mode=memory") {
        return Ok(None);
    }
    // sqlx opens with SQLITE_OPEN_URI: a `file:` name is a URI to SQLite.
    let file = match name.strip_prefix("file:") {
        Some(uri) => uri_path(uri)?,
        None => PathBuf::from(&*name),
    };
    if file.as_os_str() == ":memory:" {
        return Ok(None);
    }
    // One lock file whatever name the database is reached by (a symlink,
    // another relative path): the real path once the file exists.
    Ok(Some(std::fs::canonicalize(&file).unwrap_or(file)))
}

/// The file a SQLite URI filename names (what follows `file:`): an
/// optional `//` authority, empty or `localhost`, then the percent-encoded
/// path (https://www.sqlite.org/uri.html).
fn uri_path(uri: &str) -> anyhow::Result<PathBuf> {
    // The URI's query and fragment are no part of the file's name (sqlx cut
    // the URL's at `?` before decoding; a `%3F` decodes to one here).
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let path = match uri.strip_prefix("//") {
        Some(rest) => {
            let at = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..at];
            anyhow::ensure!(
                authority.is_empty() || authority.eq_ignore_ascii_case("localhost"),
                "SECKILL_DATABASE_URL names a SQLite file on host {authority:?}; only a local file is opened"
            );
            &rest[at..]
        }
        None => uri,
    };
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .context("SECKILL_DATABASE_URL's SQLite file name is not UTF-8 once decoded")?;
    Ok(PathBuf::from(&*path))
}

fn claim_path(path: &Path) -> anyhow::Result<DataLock> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DataLock {
            _file: file,
            path: path.to_path_buf(),
        }),
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "another seckill process holds {}: with no Redis configured, the stock ledger, \
             sessions and tokens live in that process",
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(dir: &Path) -> Config {
        Config {
            database_url: format!("sqlite://{}/data/seckill.db", dir.display()),
            ..Config::default()
        }
    }

    #[test]
    fn a_second_claim_on_the_same_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(&embedded(dir.path()))
            .unwrap()
            .expect("a file to guard");
        assert_eq!(first.path(), dir.path().join("data/seckill.db.lock"));
        let second = claim(&embedded(dir.path())).unwrap_err().to_string();
        assert!(second.contains("another seckill process holds"), "{second}");
        drop(first);
        assert!(claim(&embedded(dir.path())).unwrap().is_some());
    }

    #[test]
    fn a_database_reached_by_another_name_is_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real.db"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.db"), dir.path().join("link.db")).unwrap();
        let at = |name: &str| Config {
            database_url: format!("sqlite://{}/{name}", dir.path().display()),
            ..Config::default()
        };
        let _held = claim(&at("real.db")).unwrap().expect("a file to guard");
        assert!(
            claim(&at("link.db")).is_err(),
            "the symlink's name took a lock of its own"
        );
    }

    #[test]
    fn nothing_is_locked_when_redis_holds_the_state_or_the_database_is_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut shared = embedded(dir.path());
        shared.redis_url = Some("redis://127.0.0.1:6379/".into());
        assert!(claim(&shared).unwrap().is_none());
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
        ] {
            let c = Config {
                database_url: url.into(),
                ..Config::default()
            };
            assert!(claim(&c).unwrap().is_none(), "{url}");
        }
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn a_sqlite_uri_filename_is_the_file_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let at = |url: String| Config {
            database_url: url,
            ..Config::default()
        };
        let d = dir.path().display();
        let held = claim(&at(format!("sqlite:file:{d}/a%20b.db")))
            .unwrap()
            .expect("a file to guard");
        assert_eq!(held.path(), dir.path().join("a b.db.lock"));
        for same in [
            format!("sqlite://{d}/a b.db"),
            format!("sqlite:file://{d}/a%20b.db"),
            format!("sqlite:file://localhost{d}/a%20b.db"),
            format!("sqlite:file:{d}/a%20b.db%3Fvfs=unix"),
        ] {
            assert!(
                claim(&at(same.clone())).is_err(),
                "{same} took a lock of its own"
            );
        }
        assert!(claim(&at("sqlite:file::memory:".into())).unwrap().is_none());
        assert!(claim(&at("sqlite:file://elsewhere/x.db".into())).is_err());
    }
}
