//! File modes of a node's secrets, configuration and data: the one check
//! that a node's files are not open to other users, and the helpers that
//! keep what a node creates private.
//!
//! Rules (Unix; elsewhere these are no-ops):
//! - a private key (signing key, TLS key) is readable and writable by its
//!   owner only: no bit for group or others (`chmod 600`);
//! - a configuration file (node file, `federation.toml`, CA and node
//!   certificates) is writable by its owner only (`chmod go-w`): anyone who
//!   can edit the trust list can make the node trust another key;
//! - a node's data directory is 0700 and what it holds 0600: the process
//!   umask is 0o077 from the start of `serve`, `up` and `bench`, the data
//!   directory is created 0700, and a looser one is tightened (with a log
//!   line) before the store opens.

use std::path::{Path, PathBuf};

/// What a file holds, and so which modes it may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileClass {
    /// A private key: no access at all for group or others.
    PrivateKey,
    /// Configuration or a certificate: others may read, only the owner
    /// may write.
    Config,
}

/// A file whose mode lets other users read a secret or change what the
/// node trusts.
#[derive(Debug, thiserror::Error)]
pub enum FileModeError {
    #[error(
        "{path} is {what} (mode {mode:04o}); a private key must be readable by its owner only: \
         run `chmod 600 {path}` (and make the node's user its owner)"
    )]
    PrivateKeyOpen {
        path: String,
        what: &'static str,
        mode: u32,
    },
    #[error(
        "{path} is {what} (mode {mode:04o}); whoever can change it can change what the node \
         trusts: run `chmod go-w {path}`"
    )]
    ConfigWritable {
        path: String,
        what: &'static str,
        mode: u32,
    },
    #[error("cannot read the mode of {path}: {source}")]
    Stat {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the data directory {path} private (mode 0700): {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which of the group/other bits in `mode` a file of `class` may not have,
/// described for the message ("readable by others", …).
fn offence(mode: u32, class: FileClass) -> Option<&'static str> {
    // The worst first: writing lets another user replace what the node
    // uses; reading lets them copy a secret.
    let checks: &[(u32, &'static str)] = match class {
        FileClass::PrivateKey => &[
            (0o002, "writable by others"),
            (0o020, "writable by its group"),
            (0o004, "readable by others"),
            (0o040, "readable by its group"),
            (0o011, "accessible by group or others"),
        ],
        FileClass::Config => &[
            (0o002, "writable by others"),
            (0o020, "writable by its group"),
        ],
    };
    checks
        .iter()
        .find(|(bits, _)| mode & bits != 0)
        .map(|(_, what)| *what)
}

/// Checks that `path` (followed if a link) has a mode fit for `class`.
/// This is the one place that decides; `NodeConfig::load` calls it for
/// every file a node reads.
pub fn check(path: &Path, class: FileClass) -> Result<(), FileModeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| FileModeError::Stat {
            path: path.display().to_string(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if let Some(what) = offence(mode, class) {
            let path = path.display().to_string();
            return Err(match class {
                FileClass::PrivateKey => FileModeError::PrivateKeyOpen { path, what, mode },
                FileClass::Config => FileModeError::ConfigWritable { path, what, mode },
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, class);
    Ok(())
}

/// Sets the process umask to 0o077, so that every file and directory the
/// process creates from now on (the store's segments, sled's files, keys,
/// logs) is private to its owner. Called first thing by the commands that
/// start nodes.
pub fn restrict_umask() {
    #[cfg(unix)]
    {
        use rustix::fs::Mode;
        rustix::process::umask(Mode::from_raw_mode(0o077));
    }
}

/// Creates `dir` (and missing parents) as a directory private to its owner:
/// directories made here are 0700 whatever the umask.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes a node's data directory ready before its store opens: creates it
/// 0700 if absent; if it exists with bits for group or others, removes them
/// from it and from everything below it, and logs what it changed.
pub fn prepare_data_dir(dir: &Path) -> Result<(), FileModeError> {
    let fail = |source| FileModeError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        return create_private_dir(dir).map_err(fail);
    }
    let tightened = tighten_tree(dir).map_err(fail)?;
    if !tightened.is_empty() {
        tracing::warn!(
            data_dir = %dir.display(),
            files = tightened.len(),
            first = %tightened[0].display(),
            "the data directory was open to group or others; removed their access (0700 for \
             directories, 0600 for files)"
        );
    }
    Ok(())
}

/// Removes group and other bits from `dir` and everything below it (links
/// are not followed); returns what changed.
fn tighten_tree(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7700))?;
                changed.push(path.clone());
            }
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    stack.push(entry?.path());
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_allow_the_owner_only() {
        assert_eq!(offence(0o600, FileClass::PrivateKey), None);
        assert_eq!(offence(0o400, FileClass::PrivateKey), None);
        assert_eq!(
            offence(0o640, FileClass::PrivateKey),
            Some("readable by its group")
        );
        assert_eq!(
            offence(0o644, FileClass::PrivateKey),
            Some("readable by others")
        );
        assert_eq!(
            offence(0o620, FileClass::PrivateKey),
            Some("writable by its group")
        );
        assert_eq!(
            offence(0o602, FileClass::PrivateKey),
            Some("writable by others")
        );
        assert_eq!(
            offence(0o601, FileClass::PrivateKey),
            Some("accessible by group or others")
        );
    }

    #[test]
    fn config_files_may_be_read_but_not_written_by_others() {
        assert_eq!(offence(0o644, FileClass::Config), None);
        assert_eq!(offence(0o640, FileClass::Config), None);
        assert_eq!(
            offence(0o664, FileClass::Config),
            Some("writable by its group")
        );
        assert_eq!(
            offence(0o666, FileClass::Config),
            Some("writable by others")
        );
    }
}
