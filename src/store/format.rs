//! The store's on-disk format, stamped in the journal directory. A data
//! directory written in another format is refused with a message saying
//! so, never read as damage. The project has no migrations: a store in an
//! older format is read by the build that wrote it (export what must be
//! kept, with `cluebridge export`, then remove the directory).

use super::durable;
use super::fs::Fs;
use super::{StoreError, wal};
use crate::error::{Error, Result};
use std::path::Path;

/// What the stamp holds; changed with every change of the bytes on disk.
/// Format 2: journal records LZ4-compressed; 3: envelope locators in the
/// message records, not in an index tree of their own.
const FORMAT: &[u8] = b"cluebridge store format 4\n";

/// The stamp's file name, inside `journal/`.
const FILE: &str = "FORMAT";

/// Stamps a new store (no journal file yet) or checks an existing one.
pub(super) fn stamp_or_check(fs: &dyn Fs, data_dir: &Path) -> Result<()> {
    let dir = data_dir.join(wal::DIR);
    let io = |what: &str, source| {
        Error::Store(StoreError::Io {
            what: format!("{what} {}", dir.display()),
            source,
        })
    };
    durable::create_dir_durably(fs, &dir).map_err(|e| io("cannot create", e))?;
    if !wal::epochs(fs, &dir)?.is_empty() {
        return check(fs, data_dir);
    }
    // A crash before the directory's sync leaves no stamp and no journal
    // file: the next open stamps again.
    let path = dir.join(FILE);
    let file = fs
        .open_write(&path)
        .map_err(|e| io("cannot write the format stamp in", e))?;
    file.set_len(0)
        .and_then(|()| file.write_at(FORMAT, 0))
        .and_then(|()| file.sync_data())
        .and_then(|()| fs.sync_dir(&dir))
        .map_err(|e| io("cannot write the format stamp in", e))
}

/// Refuses a store whose journal was written in another format.
pub(super) fn check(fs: &dyn Fs, data_dir: &Path) -> Result<()> {
    let path = data_dir.join(wal::DIR).join(FILE);
    let found = match fs.read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(Error::Store(StoreError::Io {
                what: format!("cannot read {}", path.display()),
                source,
            }));
        }
    };
    if found == FORMAT {
        return Ok(());
    }
    let found = String::from_utf8_lossy(&found);
    let found = match found.trim() {
        "" => "an older format, from before the stamp",
        other => other,
    };
    Err(Error::FailedPrecondition(format!(
        "the store in {} was written in {found}; this build reads {}: \
         read it with the build that wrote it (export what must be kept), \
         then remove the directory (a development federation: remove its \
         data/ directory, `up` starts empty nodes)",
        data_dir.display(),
        String::from_utf8_lossy(FORMAT).trim(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::RealFs;

    #[test]
    fn a_new_store_is_stamped_and_another_format_is_refused_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fs = RealFs;
        stamp_or_check(&fs, tmp.path()).expect("a new store");
        let journal = tmp.path().join(wal::DIR);
        std::fs::write(journal.join(wal::file_name(1)), b"").expect("a journal file");
        stamp_or_check(&fs, tmp.path()).expect("the same format");

        std::fs::write(journal.join(FILE), b"cluebridge store format 1\n").expect("older");
        let err = stamp_or_check(&fs, tmp.path()).expect_err("another format");
        let text = err.to_string();
        assert!(
            text.contains("format 1") && text.contains("format 4") && text.contains("remove"),
            "{text}"
        );
        assert!(matches!(err, Error::FailedPrecondition(_)));

        std::fs::remove_file(journal.join(FILE)).expect("no stamp");
        let text = check(&fs, tmp.path()).expect_err("no stamp").to_string();
        assert!(text.contains("before the stamp"), "{text}");
    }
}
