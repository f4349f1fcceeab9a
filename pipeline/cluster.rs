//! Worker layout from the command line: `-w` threads per process, and timely's cluster
//! mode with `-n` processes, this one's index `-p` and a `-H` hostfile of addresses.

use std::path::PathBuf;

use clap::Args;

/// Timely worker and process options, shared by the commands that run a dataflow.
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(short = 'w', long = "workers")]
    pub workers: Option<usize>,
    /// Processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process, 0 to processes − 1.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per line, one line per process; without it, process i
    /// listens on 127.0.0.1:(2101 + i).
    #[arg(short = 'H', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    /// The timely configuration, with `default_workers` when `-w` is not given.
    pub fn timely_config(&self, default_workers: usize) -> anyhow::Result<timely::Config> {
        let threads = self.workers.unwrap_or(default_workers);
        anyhow::ensure!(threads > 0, "-w must be at least 1");
        anyhow::ensure!(self.processes > 0, "-n must be at least 1");
        anyhow::ensure!(self.process < self.processes, "-p {} is not below -n {}", self.process, self.processes);
        if self.processes == 1 {
            return Ok(timely::Config::process(threads));
        }
        let addresses = match &self.hostfile {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read hostfile {}: {e}", path.display()))?;
                let lines: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
                anyhow::ensure!(
                    lines.len() >= self.processes,
                    "hostfile {} has {} addresses for -n {}",
                    path.display(),
                    lines.len(),
                    self.processes
                );
                lines.into_iter().take(self.processes).collect()
            }
            None => (0..self.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
        };
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// This process's index in a cluster configuration (0 outside a cluster).
pub fn process_index(config: &timely::Config) -> usize {
    match &config.communication {
        timely::CommunicationConfig::Cluster { process, .. } => *process,
        _ => 0,
    }
}

/// The global indices of this process's workers, and the worker count of the cluster.
pub fn workers(config: &timely::Config) -> (std::ops::Range<usize>, usize) {
    match &config.communication {
        timely::CommunicationConfig::Thread => (0..1, 1),
        timely::CommunicationConfig::Process(n) | timely::CommunicationConfig::ProcessBinary(n) => (0..*n, *n),
        timely::CommunicationConfig::Cluster { threads, process, addresses, .. } => {
            (process * threads..(process + 1) * threads, threads * addresses.len())
        }
    }
}

/// `address` with its port moved up by `by` (a cluster's processes on one machine each
/// serve on their own port); an address without a numeric port is left as it is.
pub fn offset_port(address: &str, by: usize) -> String {
    let Some((host, port)) = address.rsplit_once(':') else { return address.to_owned() };
    match port.parse::<usize>() {
        Ok(port) if by > 0 && port > 0 => format!("{host}:{}", port + by),
        _ => address.to_owned(),
    }
}

/// How far worker 0 has delivered the outputs, told to every worker of the cluster: a
/// worker that reads input partitions commits their offsets only up to it, so a
/// message is never committed before what it led to is on the output topics.
///
/// A dataflow of its own: worker 0 sends each new `closed_before` it has delivered,
/// broadcast to every worker; the others close their inputs at once. Its frontier is
/// empty once worker 0 is done: after `u64::MAX` if it delivered everything, or without
/// it if a sink failed (then nothing more is committed).
pub struct Delivered {
    input: Option<timely::dataflow::InputHandleVec<u64, u64>>,
    announced: u64,
    seen: std::rc::Rc<std::cell::Cell<u64>>,
    probe: timely::dataflow::ProbeHandle<u64>,
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered").field("before", &self.seen.get()).finish()
    }
}

impl Delivered {
    /// Builds the dataflow on `worker`; every worker must build it, in the same order
    /// among its dataflows.
    pub fn build(worker: &mut timely::worker::Worker) -> Delivered {
        use timely::dataflow::operators::vec::{Broadcast, Input};
        use timely::dataflow::operators::{Inspect, Probe};
        let seen = std::rc::Rc::new(std::cell::Cell::new(0));
        let told = std::rc::Rc::clone(&seen);
        let (input, probe) = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, stream) = scope.new_input::<u64>();
            let probe = timely::dataflow::ProbeHandle::new();
            stream.broadcast().inspect(move |before| told.set(told.get().max(*before))).probe_with(&probe);
            (input, probe)
        });
        let input = (worker.index() == 0).then_some(input);
        Delivered { input, announced: 0, seen, probe }
    }

    /// Worker 0: every output at a time before `closed_before` is delivered.
    pub fn announce(&mut self, closed_before: u64) {
        if let Some(input) = &mut self.input
            && closed_before > self.announced
        {
            input.send(closed_before);
            input.advance_to(closed_before);
            self.announced = closed_before;
        }
    }

    /// Worker 0 at the end of a run: `delivered` everything, or stopped by a failure.
    pub fn close(&mut self, delivered: bool) {
        if delivered {
            self.announce(u64::MAX);
        }
        self.input = None;
    }

    /// Every output before this time is delivered, as far as this worker has heard.
    pub fn before(&self) -> u64 {
        self.seen.get()
    }

    /// Worker 0 is done: [`Delivered::before`] will not move again.
    pub fn done(&self) -> bool {
        self.probe.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_gets_the_next_port() {
        assert_eq!(offset_port("127.0.0.1:9187", 0), "127.0.0.1:9187");
        assert_eq!(offset_port("127.0.0.1:9187", 2), "127.0.0.1:9189");
        assert_eq!(offset_port("[::1]:9187", 1), "[::1]:9188");
        // Port 0 asks the system for a free port: every process may.
        assert_eq!(offset_port("127.0.0.1:0", 1), "127.0.0.1:0");
    }

    #[test]
    fn the_process_index_comes_from_the_cluster_configuration() {
        let args = ClusterArgs { workers: Some(1), processes: 2, process: 1, hostfile: None };
        assert_eq!(process_index(&args.timely_config(1).expect("config")), 1);
        assert_eq!(process_index(&timely::Config::process(2)), 0);
        let bad = ClusterArgs { workers: Some(1), processes: 2, process: 2, hostfile: None };
        assert!(bad.timely_config(1).expect_err("-p 2 of -n 2").to_string().contains("-p 2"));
    }
}
