//! Worker layout from the command line: `-w` threads per process, and timely's cluster
//! mode with `-n` processes, this one's index `-p` and a `-h` hostfile of addresses.

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
    #[arg(short = 'h', long = "hostfile")]
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
