//! The command line's commands and flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use defectflow::cluster::ClusterArgs;
use defectflow::tools::footage::{Codec, Container};

#[derive(Debug, Parser)]
// Every flag has its help text: `help_expected` makes clap's debug checks (the test
// below) refuse one without.
#[command(
    name = "defectflow",
    version,
    about = "Plant camera frames in, maintenance work orders out",
    help_expected = true
)]
pub struct Cli {
    /// Log lines as JSON objects (one per line, for a log shipper) instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the dataflow on the cameras of a config file.
    Run(RunArgs),
    /// Learns what each camera normally sees (its baseline), from its stream or a clip.
    Commission(CommissionArgs),
    /// Checks a config file, and what it needs of this machine (credentials, files,
    /// folders, the model), and lists every field at fault.
    CheckConfig {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// Writes synthetic plant footage with YOLO labels and ground truth.
    Synth(SynthArgs),
    /// Replays a work-order scenario and prints the work-order stream as JSON lines.
    Replay(ReplayArgs),
    /// Trains the defect model on a YOLO folder (images/, labels/, a classes file).
    Train(TrainArgs),
    /// Evaluates a model on a YOLO folder: per-class precision, recall, F1, confusion.
    Eval(EvalArgs),
    /// Prints the headline maintenance KPIs from a Parquet audit log.
    Report(ReportArgs),
    /// Turns the frames behind work orders the CMMS closed as false positive or
    /// completed into a YOLO folder: negatives and labelled defects to train on.
    Harvest(HarvestArgs),
    /// The evaluation gate: a candidate model against the current one on the held-out
    /// set and the harvest; recorded in the candidate's card, installed if it passes.
    Promote(PromoteArgs),
    /// Calibrates a model's int8 path on frames of its training data and, with
    /// --holdout, checks it against fp32 class by class; recorded in the model card.
    Quantize(QuantizeArgs),
    /// Runs the whole graph on N synthetic cameras and reports what it sustained.
    Bench(BenchArgs),
    /// Looks after a Parquet audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Pushes each work-order revision into a CMMS over its REST API (Maximo, SAP PM,
    /// MaintainX, a webhook) and turns the CMMS's status changes into wo-events.
    Bridge(BridgeArgs),
    /// Delivers the alerts topic to the people it names: a webhook per alert and mail
    /// through an SMTP server ([notify] recipients, [notifier] delivery).
    Notify(NotifyArgs),
    /// Asks an ONVIF camera (Profile S) for its media profiles and stream URIs and prints
    /// ready-to-paste `[[cameras]]` entries.
    Discover(DiscoverArgs),
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// The camera's ONVIF device service (`http://10.1.4.20/onvif/device_service`).
    #[arg(long, required_unless_present = "ws_discovery", conflicts_with = "ws_discovery")]
    pub onvif: Option<String>,
    /// Find the cameras on the local segment with a WS-Discovery probe, then ask each.
    #[arg(long)]
    pub ws_discovery: bool,
    /// Where the probe goes: the WS-Discovery multicast group, or one address.
    #[arg(long, default_value = "239.255.255.250:3702")]
    pub probe_to: std::net::SocketAddr,
    /// How long answers to the probe are awaited (seconds).
    #[arg(long, default_value_t = 3.0)]
    pub wait_s: f64,
    /// Environment variable holding the ONVIF user name (the entries name it for RTSP too).
    #[arg(long, default_value = "ONVIF_USERNAME")]
    pub username_env: String,
    /// Environment variable holding the password; neither set: no credentials are sent.
    #[arg(long, default_value = "ONVIF_PASSWORD")]
    pub password_env: String,
    /// Camera ids start with this (then the profile's token); absent: the camera's host.
    #[arg(long)]
    pub prefix: Option<String>,
}

#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// The config file (TOML) with [kafka] and [cmms]; the run's own file can hold both.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Stop once every revision on the topic at start is acknowledged and committed
    /// (a backfill, or a benchmark), instead of running until stopped.
    #[arg(long)]
    pub until_caught_up: bool,
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The config file (TOML) with [kafka], [notify] and [notifier]; the run's own file
    /// can hold them.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Stop once every alert on the topic at start is delivered and committed, instead
    /// of running until stopped.
    #[arg(long)]
    pub until_caught_up: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Rewrites each date partition before --before as one file (and in the current
    /// layout), swapping it in atomically: readers never see a partial state.
    Compact {
        /// The audit folder (`<output>/audit`).
        #[arg(long)]
        audit: PathBuf,
        /// Compact the partitions of dates before this one (YYYY-MM-DD, UTC); choose a
        /// date no run writes any more.
        #[arg(long)]
        before: String,
    },
}

#[derive(Debug, Args)]
pub struct CommissionArgs {
    /// The config file (TOML) naming the cameras.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Commission only this camera (by id); absent: every camera of the config.
    #[arg(long)]
    pub camera: Option<String>,
    /// Learn from this recording of the camera's view instead of its stream (needs --camera).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Seconds of footage to learn from; absent: `[anomaly] commission_s`.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Folder to store the baselines in; absent: `<[output] dir>/baselines`, where `run` loads them.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Synthetic cameras.
    #[arg(long, default_value_t = 8)]
    pub cameras: usize,
    /// Frames per second of each camera.
    #[arg(long, default_value_t = 15)]
    pub fps: u32,
    /// Frame width, pixels.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    /// Frame height, pixels.
    #[arg(long, default_value_t = 360)]
    pub height: u32,
    /// Frames per second of each camera kept for the model (absent: all).
    #[arg(long)]
    pub max_fps: Option<f64>,
    /// How long the bench runs, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    /// Kafka bootstrap servers (topics created); absent: no broker.
    #[arg(long)]
    pub brokers: Option<String>,
    /// The reference data the bench cameras are added to.
    #[arg(long, default_value = "examples/demo-plant/reference")]
    pub reference: PathBuf,
    /// Write the run's outputs (work orders, audit log, evidence) here; absent: none.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Print memory, throughput and latency every this many seconds (a soak).
    #[arg(long)]
    pub sample_s: Option<f64>,
    /// Seconds each camera is commissioned, then gated with its baseline; 0: not gated.
    #[arg(long, default_value_t = 0.0)]
    pub commission_s: f64,
    /// Every camera plays this recording (MP4 or MKV, H.264 or H.265) in real time
    /// instead of drawing synthetic frames: the cameras' decode is measured on real
    /// footage; frames are scaled to --width x --height.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Which frames of --source are decoded: auto, keyframes or all.
    #[arg(long, default_value = "auto")]
    pub decode: String,
    /// `ground_truth.json` of --source as `defectflow synth` wrote it: each drawn
    /// defect's work orders across the cameras, their classes and onset to work order.
    #[arg(long, requires = "source")]
    pub ground_truth: Option<PathBuf>,
    /// Change gating (`[model] change_threshold`): frames like their camera's last
    /// scored one skip the network; 0: every frame is scored.
    #[arg(long, default_value_t = 0.0)]
    pub change_threshold: f32,
    /// `[model] precision`: fp32, or int8 with the shipped card's calibration.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
}

#[derive(Debug, Args)]
pub struct HarvestArgs {
    /// The audit folder (`<output>/audit`).
    #[arg(long)]
    pub audit: PathBuf,
    /// The evidence folder; absent: `evidence` beside the audit folder.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// The YOLO folder to write (images/, labels/, classes.txt, harvest.jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// Wo-events as JSON lines (the wo-events topic's values, one a line), applied over
    /// the statuses in the audit log: what the CMMS said that the run never heard.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The audit folder (`<output>/audit`).
    #[arg(long)]
    pub audit: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// YOLO folder: images/ (.png, .jpg), labels/ (same names, .txt), classes.txt;
    /// several, comma-separated, train on all of them (generated and harvested frames).
    #[arg(long, value_delimiter = ',', required = true)]
    pub data: Vec<PathBuf>,
    /// Where to write weights.bin and model.json (a folder that holds a model is
    /// refused without --force: the shipped one is `models/weights`).
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite the model in --out.
    #[arg(long)]
    pub force: bool,
    /// Held-out YOLO folder to evaluate on after training; the result goes into the card.
    #[arg(long)]
    pub holdout: Option<PathBuf>,
    /// Seed of the initial weights and of the crops drawn.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Optimiser steps.
    #[arg(long, default_value_t = 4000)]
    pub steps: usize,
    /// Crops per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Side of the square training crops, in pixels (a multiple of 8).
    #[arg(long, default_value_t = 128)]
    pub crop_px: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    /// Go on training the model in this directory (e.g. the shipped one, on your own
    /// frames) instead of starting afresh.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Leave out the box head: boxes then follow the 8-pixel cell grid.
    #[arg(long)]
    pub no_box_head: bool,
    /// With `--init`: train only the box head (adding one if the model has none) and
    /// leave the cells' scores exactly as they were.
    #[arg(long, requires = "init", conflicts_with = "no_box_head")]
    pub box_head_only: bool,
    /// Channels of a new network at half, quarter and cell resolution (a model trained
    /// on with `--init` keeps its own).
    #[arg(
        long,
        value_name = "HALF,QUARTER,CELL",
        default_value = "16,24,40",
        value_parser = parse_channels,
        conflicts_with = "init"
    )]
    pub channels: [usize; 3],
    /// Share of training crops (0–1) given another surface texture, light, colour,
    /// blur, noise and codec artefacts (domain randomisation), so the model learns the
    /// defect rather than the look of the frames it trains on.
    #[arg(long, default_value_t = 0.0)]
    pub randomise: f64,
    /// Every this many steps the network scores all training frames and remembers the
    /// cells it gets wrong, a quarter of the crops then going to them (0: never). Going on
    /// from a model on new frames, mining often brings back what the new frames make it
    /// forget.
    #[arg(long, default_value_t = 1000)]
    pub mine_every: usize,
    /// Going on with `--init`: weight of a loss keeping the class probabilities near the
    /// starting model's on the cells it gets right, so fine-tuning on new frames (a
    /// harvest) does not forget the old ones (0: none).
    #[arg(long, default_value_t = 0.0, requires = "init")]
    pub distill: f32,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// YOLO folder to evaluate the model's frames on.
    #[arg(long, required_unless_present = "footage", conflicts_with = "footage")]
    pub data: Option<PathBuf>,
    /// Footage folder (`footage.json` + clips) to run whole through the pipeline, with
    /// commissioning and work orders, against its ground truth.
    #[arg(long)]
    pub footage: Option<PathBuf>,
    /// With --footage: frames per second of each clip the model sees.
    #[arg(long, default_value_t = 5.0)]
    pub max_fps: f64,
    /// With --footage: seconds after its onset within which a defect needs its work order.
    #[arg(long, default_value_t = 60.0)]
    pub deadline_s: f64,
    /// With --footage: a TOML file of settings over the defaults (`[anomaly]`, `[track]`, ...).
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// With --footage: keep the run's outputs (work orders, audit log, evidence) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --footage: write what a reviewer who knows the ground truth would tell the
    /// CMMS here, as wo-event JSON lines (false work orders closed as false positives,
    /// found defects completed): `harvest --events` reads them.
    #[arg(long, requires = "footage")]
    pub verdicts: Option<PathBuf>,
    /// Model directory (model.json + weights.bin).
    #[arg(long, default_value = "models/weights")]
    pub model: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the per-class rates and the confusion matrix as a PNG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Lowest cell probability that counts as a defect (default: the model card's).
    #[arg(long)]
    pub min_confidence: Option<f32>,
    /// The arithmetic the network runs in: fp32, or int8 with the card's calibration
    /// (`defectflow quantize`).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
    /// Write this evaluation (and `--min-confidence`, if given) into the model card: how a
    /// threshold chosen on a validation set is recorded with its held-out result.
    #[arg(long)]
    pub record_in_card: bool,
    /// Also write every missed object and false detection here, one JSON line each with
    /// its image: the frames to look at (or relabel) first.
    #[arg(long)]
    pub mistakes: Option<PathBuf>,
}

/// `--precision` (see `defectflow_models::detector::Precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Int8,
}

impl From<PrecisionArg> for defectflow_models::detector::Precision {
    fn from(arg: PrecisionArg) -> Self {
        match arg {
            PrecisionArg::Fp32 => Self::Fp32,
            PrecisionArg::Int8 => Self::Int8,
        }
    }
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model directory (model.json + weights.bin); its card gains the calibration.
    #[arg(long, default_value = "models/weights")]
    pub model: PathBuf,
    /// YOLO folder of the training data to measure the activations on.
    #[arg(long)]
    pub data: PathBuf,
    /// Frames of --data measured, evenly spaced over the folder.
    #[arg(long, default_value_t = 64)]
    pub frames: usize,
    /// Held-out YOLO folder, never trained on: both paths are evaluated on it and the
    /// calibration recorded only if they agree within --tolerance.
    #[arg(long)]
    pub holdout: Option<PathBuf>,
    /// Activation steps: one per layer (default) or one per channel.
    #[arg(long, default_value = "layer")]
    pub granularity: String,
    /// Keep each layer's least-squared-error step: do not refine the steps by the
    /// network's scores on the same frames.
    #[arg(long)]
    pub no_refine: bool,
    /// Largest difference of any class's object precision, recall or F1 between int8
    /// and fp32 on --holdout, in points (hundredths).
    #[arg(long, default_value_t = 0.5)]
    pub tolerance: f64,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The candidate model's directory (its card records the gate's result).
    #[arg(long)]
    pub candidate: PathBuf,
    /// The model it would replace; absent: the one in `--into`, else the shipped weights.
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Held-out YOLO folder, never trained on.
    #[arg(long)]
    pub heldout: PathBuf,
    /// The harvested YOLO folder (`defectflow harvest`).
    #[arg(long)]
    pub harvest: PathBuf,
    /// Once passed, copy the candidate here (the weights, then the card): the model folder
    /// of a run with `[model] watch`, which then swaps it in.
    #[arg(long)]
    pub into: Option<PathBuf>,
    /// How much worse than the current model the candidate may be on a set, at the lower
    /// end of the 95% bootstrap interval of the difference (object F1 on the held-out
    /// set, the share of frames right on the harvest), while better beyond noise on one.
    #[arg(long, default_value_t = defectflow_models::promotion::DEFAULT_MARGIN)]
    pub margin: f64,
    /// Also write the gate's result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The scenario file (TOML; see `tests/scenarios/`).
    pub scenario: PathBuf,
    /// Write the JSON lines here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the Parquet audit log (work_orders, assignments, wo_events) under this directory.
    #[arg(long)]
    pub audit: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short, default_value = "examples/demo-plant/defectflow.toml")]
    pub config: PathBuf,
    /// Worker threads (`-w`, overrides `runtime.workers`) and timely's cluster mode.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Stop after this many seconds (overrides `runtime.duration_s`).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Print the run's report as JSON instead of tables (alone on standard output: logs
    /// go to standard error).
    #[arg(long)]
    pub json: bool,
    /// Output folder (overrides `output.dir`): work-orders.jsonl and audit/.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the scenes: the same seed draws the same plant.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Cameras, one scene each.
    #[arg(long, default_value_t = 6)]
    pub cameras: usize,
    /// Cameras (the last ones) that show no defect.
    #[arg(long, default_value_t = 0)]
    pub defect_free: usize,
    /// Length of each camera's footage, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Frames per second.
    #[arg(long, default_value_t = 15)]
    pub fps: u32,
    /// Frame width, pixels.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    /// Frame height, pixels.
    #[arg(long, default_value_t = 360)]
    pub height: u32,
    /// Video codec.
    #[arg(long, value_enum, default_value = "h264")]
    pub codec: Codec,
    /// Container.
    #[arg(long, value_enum, default_value = "mp4")]
    pub container: Container,
    /// `video`: one encoded video per camera; `yolo`: JPEG frames for training.
    #[arg(long, value_enum, default_value = "video")]
    pub format: SynthFormat,
    /// With `--format yolo`: keep every n-th frame.
    #[arg(long, default_value_t = 1)]
    pub every: u64,
    /// With `--format yolo`: draw each crack and stain at its own darkness and tint,
    /// both from one range, and dark lines that are not defects (grooves, seams,
    /// cables) into every scene, so that only their shapes tell them apart (training
    /// data for a network that must not rely on the generator's tones).
    #[arg(long)]
    pub varied_defect_tones: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthFormat {
    Video,
    Yolo,
}

/// `--channels`: three widths, each from 1 to the int8 path's largest.
fn parse_channels(text: &str) -> Result<[usize; 3], String> {
    let widths: Vec<usize> = (text.split(','))
        .map(|w| w.trim().parse().map_err(|_| format!("{w:?} is not a channel count")))
        .collect::<Result<_, _>>()?;
    let largest = defectflow_models::quantized::MAX_OUTPUTS;
    match widths[..] {
        [a, b, c] if [a, b, c].iter().all(|w| (1..=largest).contains(w)) => Ok([a, b, c]),
        _ => Err(format!("three channel counts from 1 to {largest} expected, as in 16,24,40")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_command_and_flag_has_help() {
        Cli::command().debug_assert();
    }

    #[test]
    fn channels_are_three_widths_the_int8_path_can_run() {
        assert_eq!(parse_channels("16, 32,48"), Ok([16, 32, 48]));
        for bad in ["16,24", "16,24,40,40", "16,24,65", "16,0,40", "16,x,40"] {
            assert!(parse_channels(bad).is_err(), "{bad}");
        }
        assert!(parse_channels("16,x,40").expect_err("not a number").contains("\"x\""));
    }
}
