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

/// A capture file (heap snapshot, core) being written: mode 0600 (it holds
/// the target's secrets), under a temporary name in the destination's
/// directory, renamed to the destination only by [`CaptureFile::persist`],
/// and removed when dropped unpersisted, so no partial file ever carries the
/// name the user asked for.
pub struct CaptureFile {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
}

impl CaptureFile {
    /// Fails at once when the destination exists or its directory is not writable.
    pub fn create(path: &Path) -> Result<CaptureFile, FileError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(FileError::Exists(path.to_path_buf()));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.nodeprof-{}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&temp)
            .map_err(|source| FileError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CaptureFile {
            file: Some(file),
            temp,
            path: path.to_path_buf(),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until persisted")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the file is written to, for free-space checks.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Syncs the file and gives it its name, never replacing a file that
    /// appeared there meanwhile.
    pub fn persist(mut self) -> Result<PathBuf, FileError> {
        let file = self.file.take().expect("open until persisted");
        let create = |source| FileError::Create {
            path: self.path.clone(),
            source,
        };
        file.sync_all().map_err(create)?;
        drop(file);
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in a path")
        };
        let (from, to) = (c(&self.temp), c(&self.path));
        // SAFETY: two NUL-terminated paths relative to the current directory.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(FileError::Exists(self.path.clone()));
            }
            return Err(create(e));
        }
        self.temp = PathBuf::new();
        Ok(self.path.clone())
    }
}

impl Drop for CaptureFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Bytes free to an unprivileged writer in the file system holding `dir`.
pub fn free_disk(dir: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills the struct we pass.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    fn capture_files_appear_only_when_persisted() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.core");
        let mut file = CaptureFile::create(&path).unwrap();
        file.file().write_all(b"data").unwrap();
        assert!(!path.exists());
        let listed = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(listed(), 1);
        let written = file.persist().unwrap();
        assert_eq!(std::fs::read(&written).unwrap(), b"data");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Existing destinations and dropped captures.
        assert!(matches!(
            CaptureFile::create(&path).err().unwrap(),
            FileError::Exists(_)
        ));
        drop(CaptureFile::create(&dir.path().join("d.core")).unwrap());
        assert_eq!(listed(), 1);
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("e")).unwrap();
        assert!(CaptureFile::create(&dir.path().join("e")).is_err());
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
