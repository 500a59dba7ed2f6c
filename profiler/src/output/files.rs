//! Output files of a profile. They are created before sampling starts, so
//! a bad path fails at once rather than after minutes of recording; never
//! overwritten; never reached through a symlink.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
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

pub struct OutputFiles {
    files: Vec<(Format, PathBuf, File)>,
}

impl OutputFiles {
    pub fn create(prefix: &Path, formats: &[Format]) -> Result<OutputFiles, FileError> {
        let mut created = OutputFiles { files: Vec::new() };
        for &format in formats {
            let mut path = prefix.as_os_str().to_owned();
            path.push(".");
            path.push(format.extension());
            let path = PathBuf::from(path);
            match create_new(&path) {
                Ok(file) => created.files.push((format, path, file)),
                Err(e) => {
                    created.discard();
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// Writes the profile in every format; returns the paths written.
    pub fn write(
        self,
        profile: &Profile,
        title: &str,
    ) -> Result<Vec<PathBuf>, (PathBuf, OutputError)> {
        let mut written = Vec::new();
        for (format, path, file) in self.files {
            let mut w = BufWriter::new(file);
            let result = format.write(profile, title, &mut w).and_then(|()| {
                w.into_inner()
                    .map(drop)
                    .map_err(|e| OutputError::Io(e.into_error()))
            });
            result.map_err(|e| (path.clone(), e))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Removes the (still empty) files after a failure.
    pub fn discard(self) {
        for (_, path, _) in self.files {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn create_new(path: &Path) -> Result<File, FileError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                FileError::Exists(path.to_path_buf())
            } else {
                FileError::Create {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })
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
    fn default_prefix_names_pid_and_time() {
        let p = default_prefix(42).to_string_lossy().into_owned();
        assert!(p.starts_with("nodeprof-42-20"), "{p}");
        assert_eq!(p.len(), "nodeprof-42-20261125-122016".len(), "{p}");
    }
}
