//! `moto_server` (PyPI), which speaks the AWS KMS protocol, on a loopback
//! port of its own: started with a retry when another process takes the
//! port first, killed and reaped on drop. Test files add their own methods
//! (creating keys) in further `impl Moto` blocks.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        for _attempt in 0..5 {
            let port = super::free_port();
            // Owned by `Moto` at once: its Drop kills and reaps the child.
            let mut moto = Moto {
                child: Command::new("moto_server")
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("moto_server on PATH (pip install 'moto[server]')"),
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut exited = false;
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not listen on {port}"
                );
                if moto.child.try_wait().unwrap().is_some() {
                    // The port was taken meanwhile: try another one.
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !exited {
                return moto;
            }
        }
        panic!("moto_server could not bind any of 5 free ports");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}
