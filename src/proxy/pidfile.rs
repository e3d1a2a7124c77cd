//! `pid_file`: the running instance's process id, written at start and
//! removed at exit, so that `pgveil reload` (and init scripts, as with
//! PgBouncer's `pidfile`) can signal it. A file left by a crashed instance
//! is replaced; one naming a live process stops a second instance from
//! starting with the same file.

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
        std::fs::write(&tmp, format!("{me}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("pid_file {}: {e}", path.display()))?;
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
