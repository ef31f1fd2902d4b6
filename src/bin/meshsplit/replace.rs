//! Replacing the ECDS file: under an advisory lock, through symlinks, atomically, keeping the
//! file's owner, group and mode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{fchown, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// How long `lock` waits for another `apply` to finish with the file. One apply holds the lock
/// for a read, a compile and a write: milliseconds.
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// The file a write to `path` must replace: `path`, or the file a symlink at `path` leads to
/// (a Kubernetes ConfigMap volume links `FILE` to `..data/FILE`). Replacing the link itself
/// would leave the target stale for whoever reads it through another link.
pub fn target(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("a symlink whose target cannot be reached: {e}"),
            )
        }),
        _ => Ok(path.to_owned()),
    }
}

/// An exclusive advisory lock (`flock`) on `.FILE.lock` next to `file`, held until dropped.
///
/// Two `apply` runs at once would otherwise both read version N and both write N+1, and one
/// config would be lost while both report success. The lock file stays: removing it while
/// another run waits on it would let a third run lock a new file beside it.
pub fn lock(file: &Path) -> io::Result<Flock<File>> {
    let lock_path = sibling(file, "lock")?;
    let mut handle = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", lock_path.display())))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is held by another apply for over {} s",
                            lock_path.display(),
                            LOCK_WAIT.as_secs()
                        ),
                    ));
                }
                handle = back;
                std::thread::sleep(LOCK_RETRY);
            }
            Err((_, errno)) => {
                return Err(io::Error::new(
                    io::Error::from(errno).kind(),
                    format!("cannot lock {}: {errno}", lock_path.display()),
                ))
            }
        }
    }
}

/// `.NAME.SUFFIX` in the directory of `file`.
fn sibling(file: &Path, suffix: &str) -> io::Result<PathBuf> {
    let dir = directory(file);
    let file_name = file
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    Ok(dir.join(format!(".{}.{suffix}", file_name.to_string_lossy())))
}

fn directory(file: &Path) -> &Path {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to a temporary file next to `file`, gives it the owner, group and mode of
/// the file it replaces, syncs it and renames it over `file`: readers see the old file or the
/// new one, never a part. `file` must not be a symlink (see `target`).
///
/// The owner matters: an Envoy running as another user must still be able to read the file
/// after an `apply` run as root. When the owner cannot be kept (not root, file owned by
/// someone else), nothing is written.
pub fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = directory(file);
    let tmp = sibling(file, &format!("{}.tmp", std::process::id()))?;
    let result = (|| {
        let mut handle = File::create(&tmp)?;
        if let Ok(old) = fs::metadata(file) {
            let made = handle.metadata()?;
            if (made.uid(), made.gid()) != (old.uid(), old.gid()) {
                fchown(&handle, Some(old.uid()), Some(old.gid())).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot keep the file's owner and group {}:{} ({e}); nothing written",
                            old.uid(),
                            old.gid()
                        ),
                    )
                })?;
            }
            // After the owner: a change of owner clears set-id bits.
            handle.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))?;
        }
        handle.write_all(bytes)?;
        handle.sync_all()?;
        drop(handle);
        fs::rename(&tmp, file)?;
        // The rename itself survives a crash once the directory is synced.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshsplit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_replaces_the_file_keeps_its_mode_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("ecds.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_is_written_through_to_its_target() {
        let dir = scratch("symlink");
        fs::create_dir(dir.join("data")).unwrap();
        fs::write(dir.join("data/ecds.json"), "old").unwrap();
        std::os::unix::fs::symlink("data/ecds.json", dir.join("ecds.json")).unwrap();
        let real = target(&dir.join("ecds.json")).unwrap();
        assert_eq!(real, fs::canonicalize(dir.join("data/ecds.json")).unwrap());
        write_atomically(&real, b"new").unwrap();
        assert!(fs::symlink_metadata(dir.join("ecds.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(dir.join("ecds.json")).unwrap(), b"new");
        assert_eq!(target(&dir.join("plain")).unwrap(), dir.join("plain"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_waits_for_the_first() {
        let dir = scratch("lock");
        let path = dir.join("ecds.json");
        let first = lock(&path).unwrap();
        let handle = std::thread::spawn({
            let path = path.clone();
            move || {
                let started = Instant::now();
                let _second = lock(&path).unwrap();
                started.elapsed()
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        assert!(handle.join().unwrap() >= Duration::from_millis(150));
        assert!(dir.join(".ecds.json.lock").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
