//! Output files of a profile. Their paths are checked and their temporary
//! files created before sampling starts, so a bad path fails at once rather
//! than after minutes of recording. Each file is written under a hidden
//! temporary name in the same directory and renamed into place only when
//! complete: a file under its final name is always whole. Never overwritten;
//! never reached through a symlink.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Format, OutputError};
use crate::profile::Profile;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0} already exists: nodeprof never overwrites (choose another -o)")]
    Exists(PathBuf),
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A failed write: which file, why, and which files are complete.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}; {}", written_list(.written))]
pub struct WriteError {
    pub path: PathBuf,
    pub source: OutputError,
    /// Files written completely before the failure (they are kept).
    pub written: Vec<PathBuf>,
}

fn written_list(written: &[PathBuf]) -> String {
    if written.is_empty() {
        return "no file was written".into();
    }
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    format!("complete and kept: {}", names.join(", "))
}

/// One output: its final path, and the temporary file it is written to.
struct Pending {
    format: Format,
    path: PathBuf,
    temporary: PathBuf,
    file: Option<File>,
}

pub struct OutputFiles {
    pending: Vec<Pending>,
}

impl OutputFiles {
    /// Checks that no output exists yet and creates the temporary files.
    /// A format listed twice is written once.
    pub fn create(prefix: &Path, formats: &[Format]) -> Result<OutputFiles, FileError> {
        let mut created = OutputFiles {
            pending: Vec::new(),
        };
        for &format in formats {
            if created.pending.iter().any(|p| p.format == format) {
                continue;
            }
            let mut path = prefix.as_os_str().to_owned();
            path.push(".");
            path.push(format.extension());
            let path = PathBuf::from(path);
            // Not even a dangling symlink may stand where the file will go.
            if path.symlink_metadata().is_ok() {
                return Err(FileError::Exists(path));
            }
            let temporary = temporary_name(&path);
            let file = create_new(&temporary).map_err(|source| FileError::Create {
                path: path.clone(),
                source,
            })?;
            created.pending.push(Pending {
                format,
                path,
                temporary,
                file: Some(file),
            });
        }
        Ok(created)
    }

    /// Writes the profile in every format; returns the paths written. On a
    /// failure the files already complete stay, the rest are removed.
    pub fn write(mut self, profile: &Profile, title: &str) -> Result<Vec<PathBuf>, WriteError> {
        let mut written = Vec::new();
        for pending in &mut self.pending {
            let file = pending.file.take().expect("each file is written once");
            let result = write_complete(file, |w| pending.format.write(profile, title, w))
                .and_then(|()| rename_new(&pending.temporary, &pending.path));
            match result {
                Ok(()) => written.push(pending.path.clone()),
                Err(source) => {
                    return Err(WriteError {
                        path: pending.path.clone(),
                        source,
                        written,
                    });
                }
            }
        }
        Ok(written)
    }

    /// Removes the temporary files after a failure.
    pub fn discard(self) {
        drop(self);
    }
}

impl Drop for OutputFiles {
    fn drop(&mut self) {
        // Whatever was not renamed into place is incomplete.
        for pending in &self.pending {
            let _ = std::fs::remove_file(&pending.temporary);
        }
    }
}

/// Writes through a buffer and to the disk: a full disk fails here, not later.
fn write_complete(
    file: File,
    write: impl FnOnce(&mut dyn Write) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let mut w = BufWriter::new(file);
    write(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| OutputError::Io(e.into_error()))?;
    file.sync_all()?;
    Ok(())
}

/// `dir/.name.nodeprof-PID.tmp`: hidden, and unique to this nodeprof, so a
/// killed run's leftover never blocks the next one.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.nodeprof-{}.tmp", std::process::id()))
}

/// Renames `from` to `to` unless `to` exists (renameat2 RENAME_NOREPLACE).
fn rename_new(from: &Path, to: &Path) -> Result<(), OutputError> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::from);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: valid NUL-terminated paths relative to the current directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(OutputError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// `nodeprof-<pid>-<UTC date>-<time>` in the current directory.
pub fn default_prefix(pid: u32) -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .replace('T', "-");
    PathBuf::from(format!("nodeprof-{pid}-{stamp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("p");
        std::fs::write(dir.path().join("p.folded"), "keep").unwrap();
        let err = OutputFiles::create(&prefix, &Format::ALL).err().unwrap();
        assert!(matches!(err, FileError::Exists(_)), "{err}");
        // The file created before the failure is cleaned up; the existing one is untouched.
        assert!(!dir.path().join("p.cpuprofile").exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a temporary file stayed"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("p.folded")).unwrap(),
            "keep"
        );

        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.path().join("q.svg")).unwrap();
        assert!(OutputFiles::create(&dir.path().join("q"), &[Format::Svg]).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let err = OutputFiles::create(Path::new("/nonexistent-dir/x"), &[Format::Svg])
            .err()
            .unwrap();
        assert!(matches!(err, FileError::Create { .. }), "{err}");
    }

    #[test]
    fn files_appear_only_complete() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("p");
        let files =
            OutputFiles::create(&prefix, &[Format::Folded, Format::Folded, Format::Svg]).unwrap();
        // Before writing, no file under its final name.
        assert!(!dir.path().join("p.folded").exists());
        let profile = crate::output::testdata::sample_profile();
        let written = files.write(&profile, "t").unwrap();
        assert_eq!(
            written,
            [dir.path().join("p.folded"), dir.path().join("p.svg")]
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // Dropped without writing: the temporary files go.
        let files = OutputFiles::create(&dir.path().join("q"), &Format::ALL).unwrap();
        drop(files);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn default_prefix_names_pid_and_time() {
        let p = default_prefix(42).to_string_lossy().into_owned();
        assert!(p.starts_with("nodeprof-42-20"), "{p}");
        assert_eq!(p.len(), "nodeprof-42-20261125-122016".len(), "{p}");
    }
}
