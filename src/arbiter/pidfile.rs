//! The pid file: written once the arbiter listens, removed on exit, and a guard against
//! starting twice.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Why the pid file stops a start.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    /// Another live process is named in it.
    #[error(
        "pid file {} names a running process ({pid}) — is oxicorn already running? \
         Stop it, or remove the file if that process is not oxicorn",
        path.display()
    )]
    Running {
        /// The file.
        path: PathBuf,
        /// The live pid it holds.
        pid: i32,
    },
    /// The file could not be written.
    #[error("cannot write pid file {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: io::Error,
    },
}

/// A pid file this process wrote.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: u32,
}

/// Refuses to go on if `path` names a live process other than this one. A file naming a dead
/// process, or holding garbage, is stale and will be replaced.
///
/// # Errors
/// [`PidfileError::Running`].
pub fn check(path: &Path) -> Result<(), PidfileError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return Ok(());
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => Err(PidfileError::Running {
            path: path.to_path_buf(),
            pid,
        }),
        Err(_) => Ok(()),
    }
}

impl Pidfile {
    /// Writes this process's pid to `path`, atomically (a temporary file renamed over it), so a
    /// reader never sees a half-written number.
    ///
    /// # Errors
    /// [`PidfileError::Write`].
    pub fn write(path: &Path) -> Result<Pidfile, PidfileError> {
        let pid = std::process::id();
        let err = |cause| PidfileError::Write {
            path: path.to_path_buf(),
            cause,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".{pid}.tmp"));
        let tmp = PathBuf::from(tmp_name);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{pid}")?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(Pidfile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// The pid file this process wrote before a binary upgrade re-executed it (same pid),
    /// without writing it again: so it can still be removed.
    pub fn adopt(path: &Path) -> Pidfile {
        Pidfile {
            path: path.to_path_buf(),
            pid: std::process::id(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it still holds our pid (another server may have replaced it).
    pub fn remove(&self) {
        if let Ok(text) = std::fs::read_to_string(&self.path)
            && text.trim() == self.pid.to_string()
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_live_pid_and_replaces_a_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        // pid 1 is always alive (and not us).
        std::fs::write(&path, "1\n").unwrap();
        assert!(matches!(
            check(&path),
            Err(PidfileError::Running { pid: 1, .. })
        ));
        // A pid far above pid_max is never alive.
        std::fs::write(&path, "2147483647\n").unwrap();
        assert!(check(&path).is_ok());
        std::fs::write(&path, "garbage").unwrap();
        assert!(check(&path).is_ok());
        let pf = Pidfile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        pf.remove();
        assert!(!path.exists());
    }
}
