//! `pid_file`: the running instance's process id, written at start and
//! removed at exit, so that `pgveil reload` (and init scripts, as with
//! PgBouncer's `pidfile`) can signal it. A file left by a crashed instance
//! is replaced; one naming a live process stops a second instance from
//! starting with the same file.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The pid file of this process; removed on drop.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Write this process's id to `path` (atomically: a temporary file
    /// renamed into place).
    pub fn create(path: &Path) -> Result<PidFile, String> {
        let me = std::process::id() as i32;
        if let Ok(pid) = read(path)
            && pid != me
            && alive(pid)
        {
            return Err(format!(
                "pid_file {}: process {pid} is running with this pid file: stop that pgveil first, or give this one its own pid_file",
                path.display()
            ));
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("pid_file {}: {e}", path.display()))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // Never written through a symlink or into a file someone else
        // left at the temporary name (the directory may be shared): that
        // name is removed (unlink does not follow a symlink) and created
        // anew, exclusively, readable by all and writable by this user.
        let write = || -> std::io::Result<()> {
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(format!("{me}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("pid_file {}: {e}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: another instance may have taken the file over.
        if read(&self.path).is_ok_and(|pid| pid == std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The process id in a pid file.
pub fn read(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "pid_file {}: {e} (is pgveil running with this config?)",
            path.display()
        )
    })?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("pid_file {}: does not hold a process id", path.display()))
}

/// The process id of the running pgveil, for `pgveil reload` to signal:
/// only from a pid file nobody but its owner could have written (a
/// regular file, not a symlink, owned by this user or root, writable by
/// its owner only, in a directory other users cannot write to or only
/// with the sticky bit), naming a process that runs pgveil's executable
/// (a stale file's pid may have been reused).
pub fn read_trusted(path: &Path) -> Result<i32, String> {
    let shown = path.display();
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("pid_file {shown}: {e} (is pgveil running with this config?)"))?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() {
        return Err(format!(
            "pid_file {shown}: not a regular file (a symlink?): refusing to signal what it names; remove it and restart pgveil"
        ));
    }
    if meta.mode() & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0 && me != 0) {
        return Err(format!(
            "pid_file {shown}: owned by uid {} with mode {:o}: only its owner may write it, and it must be this user's (or root's); refusing to signal what it names",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let d = std::fs::metadata(dir).map_err(|e| format!("pid_file {shown}: {e}"))?;
        let mode = d.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "pid_file {shown}: its directory is writable by every user (mode {:o}): anyone could have replaced the file; refusing to signal what it names: put pid_file in a directory only pgveil's user can write (e.g. /run/pgveil)",
                mode & 0o7777
            ));
        }
    }
    let pid = read(path)?;
    if !runs_pgveil(pid) {
        return Err(format!(
            "pid_file {shown}: process {pid} is not pgveil (a stale pid file whose process id was reused?): not signalled; remove the file, or restart pgveil"
        ));
    }
    Ok(pid)
}

/// Whether process `pid` runs the same executable as this process (by
/// file name; the running one may have been replaced on disk since). Where
/// that cannot be told (no /proc, another user's process), yes: kill(2)
/// then decides.
fn runs_pgveil(pid: i32) -> bool {
    let name = |p: &Path| {
        p.file_name().map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
    };
    let theirs = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return true,
        // No such process (kill(2) says so), or no /proc.
        Err(_) => return !Path::new(&format!("/proc/{pid}")).exists(),
    };
    let Ok(mine) = std::env::current_exe() else {
        return true;
    };
    name(&theirs) == name(&mine)
}

/// Send SIGHUP to `pid`.
pub fn hangup(pid: i32) -> Result<(), String> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Whether a process with this id exists (signal 0 checks without
/// delivering anything).
fn alive(pid: i32) -> bool {
    // SAFETY: as above.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_replaced_when_stale_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/pgveil.pid");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A crashed instance's file (no such process) is taken over.
        std::fs::write(&path, "2147483646\n").unwrap();
        let f = PidFile::create(&path).unwrap();
        assert_eq!(read(&path).unwrap(), std::process::id() as i32);
        drop(f);
        assert!(!path.exists());
        // A live process's file is not.
        std::fs::write(&path, "1\n").unwrap();
        let e = PidFile::create(&path).err().unwrap();
        assert!(e.contains("process 1 is running"), "{e}");
    }
}
