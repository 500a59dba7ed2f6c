//! Output files of a profile. Their paths are checked and their temporary
//! files created before sampling starts, so a bad path fails at once rather
//! than after minutes of recording. Each file is written as an unnamed file
//! of the destination's directory (`O_TMPFILE`) and linked under its name
//! only when complete: a file under its final name is always whole, and a
//! nodeprof killed midway leaves nothing behind. File systems without
//! `O_TMPFILE` get a hidden temporary name, renamed into place. Never
//! overwritten; never reached through a symlink.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
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
    /// Files written completely (they are kept).
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
    temporary: Option<TempFile>,
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
            let temporary =
                TempFile::new_for(&path, 0o644).map_err(|source| FileError::Create {
                    path: path.clone(),
                    source,
                })?;
            created.pending.push(Pending {
                format,
                path,
                temporary: Some(temporary),
            });
        }
        Ok(created)
    }

    /// Writes the profile in every format; returns the paths written. On a
    /// failure the files already complete stay, the rest are removed.
    /// Every format is tried, also after one failed (a full disk may still
    /// take a small file); the error names the first failure.
    pub fn write(mut self, profile: &Profile, title: &str) -> Result<Vec<PathBuf>, WriteError> {
        let mut written = Vec::new();
        let mut failed = None;
        for pending in &mut self.pending {
            let mut temporary = pending.temporary.take().expect("each file is written once");
            let result = write_complete(temporary.file(), |w| {
                pending.format.write(profile, title, w)
            })
            .and_then(|()| Ok(temporary.persist(&pending.path)?));
            match result {
                Ok(()) => written.push(pending.path.clone()),
                Err(source) => {
                    failed.get_or_insert((pending.path.clone(), source));
                }
            }
        }
        match failed {
            None => Ok(written),
            Some((path, source)) => Err(WriteError {
                path,
                source,
                written,
            }),
        }
    }

    /// Removes the temporary files after a failure.
    pub fn discard(self) {
        drop(self);
    }
}

/// A capture file (heap snapshot, core) being written: mode 0600 (it holds
/// the target's secrets), under a temporary name in the destination's
/// directory, renamed to the destination only by [`CaptureFile::persist`],
/// and removed when dropped unpersisted, so no partial file ever carries the
/// name the user asked for.
pub struct CaptureFile {
    temporary: TempFile,
    path: PathBuf,
}

impl CaptureFile {
    /// Fails at once when the destination exists or its directory is not writable.
    pub fn create(path: &Path) -> Result<CaptureFile, FileError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(FileError::Exists(path.to_path_buf()));
        }
        let temporary = TempFile::new_for(path, 0o600).map_err(|source| FileError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(CaptureFile {
            temporary,
            path: path.to_path_buf(),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.temporary.file()
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
        let create = |source| FileError::Create {
            path: self.path.clone(),
            source,
        };
        self.temporary.file().sync_all().map_err(create)?;
        match self.temporary.persist(&self.path) {
            Ok(()) => Ok(self.path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(FileError::Exists(self.path.clone()))
            }
            Err(e) => Err(create(e)),
        }
    }
}

/// Where a capture goes: `-o FILE`, or the default name
/// (`nodeprof-PID-DATE-TIME.EXT`) in `-o DIR/` or the current directory.
pub fn capture_path(output: Option<&Path>, pid: u32, extension: &str) -> PathBuf {
    let mut name = default_prefix(pid).into_os_string();
    name.push(".");
    name.push(extension);
    match output {
        Some(dir) if dir.is_dir() => dir.join(name),
        Some(file) => file.to_path_buf(),
        None => PathBuf::from(name),
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

/// Writes through a buffer and to the disk: a full disk fails here, not later.
fn write_complete(
    file: &mut File,
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

/// A file being written for `dest`, nameless until [`TempFile::persist`]:
/// an `O_TMPFILE` file of `dest`'s directory, which disappears with its
/// last descriptor (even after SIGKILL); or, where the file system has no
/// `O_TMPFILE`, a hidden name there, removed when dropped unpersisted.
struct TempFile {
    file: File,
    /// The hidden name, for file systems without `O_TMPFILE`.
    named: Option<PathBuf>,
}

impl TempFile {
    fn new_for(dest: &Path, mode: u32) -> std::io::Result<TempFile> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let unnamed = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .mode(mode)
            .open(dir);
        match unnamed {
            Ok(file) => Ok(TempFile { file, named: None }),
            // EOPNOTSUPP (no O_TMPFILE here), EISDIR (a kernel before it).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                TempFile::named_for(dest, mode)
            }
            Err(e) => Err(e),
        }
    }

    /// The fallback: a hidden name beside `dest`.
    fn named_for(dest: &Path, mode: u32) -> std::io::Result<TempFile> {
        let name = temporary_name(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&name)?;
        Ok(TempFile {
            file,
            named: Some(name),
        })
    }

    fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Gives the file the name `dest`, never replacing anything there
    /// (`AlreadyExists` then).
    fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        match self.named.take() {
            None => {
                let c =
                    |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::from);
                let to_c = c(dest)?;
                let fd = self.file.as_raw_fd();
                // linkat through /proc needs no capability, unlike AT_EMPTY_PATH;
                // the latter serves where /proc is not this process's.
                let through_proc = c(Path::new(&format!("/proc/self/fd/{fd}")))?;
                // SAFETY: valid NUL-terminated paths and an open descriptor.
                let mut rc = unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        through_proc.as_ptr(),
                        libc::AT_FDCWD,
                        to_c.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                };
                if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                    // SAFETY: as above.
                    rc = unsafe {
                        libc::linkat(
                            fd,
                            c"".as_ptr(),
                            libc::AT_FDCWD,
                            to_c.as_ptr(),
                            libc::AT_EMPTY_PATH,
                        )
                    };
                }
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
            Some(name) => {
                let renamed = rename_new(&name, dest);
                if renamed.is_err() {
                    self.named = Some(name);
                }
                renamed
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // A named file not persisted is incomplete; an unnamed one goes by itself.
        if let Some(name) = &self.named {
            let _ = std::fs::remove_file(name);
        }
    }
}

/// `dir/.name.nodeprof-PID.tmp`: hidden, and unique to this nodeprof, so a
/// killed run's leftover never blocks the next one.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.nodeprof-{}.tmp", std::process::id()))
}

/// Renames `from` to `to` unless `to` exists (renameat2 RENAME_NOREPLACE).
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::from);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // The system call itself: the musl of the static build has no
    // renameat2 wrapper. SAFETY: valid NUL-terminated paths relative to the
    // current directory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EINVAL) {
        return Err(error);
    }
    // NFS and some FUSE file systems have no RENAME_NOREPLACE: a hard link
    // refuses an existing name too.
    std::fs::hard_link(from, to)?;
    let _ = std::fs::remove_file(from);
    Ok(())
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
    fn capture_files_appear_only_when_persisted() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.core");
        let mut file = CaptureFile::create(&path).unwrap();
        file.file().write_all(b"data").unwrap();
        assert!(!path.exists());
        let listed = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(listed(), 0, "the file being written has no name");
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

    /// Where a file system has no O_TMPFILE: a hidden name, renamed into
    /// place, never over an existing file, removed when dropped.
    #[test]
    fn named_temporary_files_behave_the_same() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let listed = || std::fs::read_dir(dir.path()).unwrap().count();
        let dest = dir.path().join("a.svg");
        let mut temporary = TempFile::named_for(&dest, 0o600).unwrap();
        temporary.file().write_all(b"x").unwrap();
        assert_eq!(listed(), 1);
        temporary.persist(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");
        assert_eq!(listed(), 1);
        let again = TempFile::named_for(&dest, 0o600).unwrap();
        let error = again.persist(&dest).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");
        assert_eq!(listed(), 1, "the refused temporary file stayed");
        drop(TempFile::named_for(&dir.path().join("b.svg"), 0o600).unwrap());
        assert_eq!(listed(), 1);
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
