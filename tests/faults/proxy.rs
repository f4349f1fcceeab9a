//! A TCP proxy on 127.0.0.1 between defectflow and the broker, to take the broker away
//! (every connection cut, new ones refused: as a broker process killed) and bring it
//! back, or to delay every chunk of bytes in both directions (a slow broker); it keeps
//! what clients sent, to show what went over the wire.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    /// While set, the proxy does not listen and has cut every connection.
    down: AtomicBool,
    /// Milliseconds each chunk waits before it is passed on.
    delay_ms: AtomicU64,
    stop: AtomicBool,
    /// Both ends of every open connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
    /// The first bytes clients sent, over all connections.
    from_clients: Mutex<Vec<u8>>,
}

/// Most bytes from clients kept.
const KEPT_BYTES: usize = 1 << 20;

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`origin` until dropped.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
}

impl Proxy {
    pub fn start(port: u16, origin: u16) -> Proxy {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        std::thread::spawn(move || accept(port, origin, &shared));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the proxy did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proxy { state }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::up`].
    pub fn down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for stream in self.state.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }

    /// What clients sent, over all connections so far (the first MiB).
    pub fn sent_by_clients(&self) -> Vec<u8> {
        self.state.from_clients.lock().expect("lock").clone()
    }

    /// Every chunk of bytes, either way, waits this long.
    pub fn delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.down();
    }
}

fn accept(port: u16, origin: u16, state: &Arc<State>) {
    while !state.stop.load(Ordering::SeqCst) {
        if state.down.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the proxy's port");
        listener.set_nonblocking(true).expect("nonblocking");
        while !state.down.load(Ordering::SeqCst) && !state.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((client, _)) => {
                    client.set_nonblocking(false).expect("blocking");
                    let Ok(server) = TcpStream::connect(("127.0.0.1", origin)) else { continue };
                    let mut open = state.open.lock().expect("lock");
                    for stream in [&client, &server] {
                        open.push(stream.try_clone().expect("clone"));
                    }
                    drop(open);
                    let ways = [
                        (client.try_clone().expect("clone"), server.try_clone().expect("clone"), true),
                        (server, client, false),
                    ];
                    for (from, to, from_client) in ways {
                        let state = Arc::clone(state);
                        std::thread::spawn(move || pump(from, to, &state, from_client));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        // The listener closes here: new connections are refused while down.
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: &State, from_client: bool) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if from_client {
            let mut kept = state.from_clients.lock().expect("lock");
            let room = KEPT_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&buffer[..n.min(room)]);
        }
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if state.down.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
