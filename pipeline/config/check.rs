//! What a config needs of the machine it runs on, checked before a run (`check-config`):
//! credentials in the environment, the files and folders it names, the model card.

use std::path::Path;

use defectflow_models::card::ModelCard;

use super::{RunConfig, SourceUrl};
use crate::reference::PlantReference;

impl RunConfig {
    /// Every field whose file, folder or environment variable is missing or unusable
    /// on this machine, with what is wrong.
    pub fn environment_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            if let Some(credentials) = &camera.credentials {
                for (name, variable) in
                    [("username_env", &credentials.username_env), ("password_env", &credentials.password_env)]
                {
                    if std::env::var_os(variable).is_none() {
                        let field = format!("cameras[{i}].credentials.{name}");
                        problems.push((field, format!("environment variable `{variable}` is not set")));
                    }
                }
            }
            if let Ok(SourceUrl::File(path)) = camera.source_url()
                && !path.is_file()
            {
                problems.push((format!("cameras[{i}].url"), format!("{} is not a file", path.display())));
            }
        }
        if let Some(cmms) = &self.cmms
            && let Err(problem) = cmms.secret()
        {
            problems.push(problem);
        }
        if let Some(model) = &self.model {
            let dir = model.resolved_dir();
            match ModelCard::load(&dir) {
                Ok(card) if !dir.join(&card.weights_file).is_file() => problems.push((
                    "model.dir".into(),
                    format!("{}: the card names {}, which is not there", dir.display(), card.weights_file),
                )),
                Ok(card)
                    if model.precision == defectflow_models::detector::Precision::Int8 && card.int8.is_none() =>
                {
                    problems.push((
                        "model.precision".into(),
                        format!(
                            "\"int8\" needs the model's int8 calibration, which {} lacks: run `defectflow quantize --model {} --data TRAINING_DIR`",
                            dir.join("model.json").display(),
                            dir.display()
                        ),
                    ))
                }
                Ok(_) => {}
                Err(error) => problems.push(("model.dir".into(), error.to_string())),
            }
        }
        if let Some(reference) = &self.plant.reference {
            if !reference.is_dir() {
                problems.push(("plant.reference".into(), format!("{} is not a folder", reference.display())));
            } else if let Err(error) = PlantReference::load(reference) {
                problems.push(("plant.reference".into(), error.to_string()));
            }
        }
        if let Some(script) = &self.plant.cmms_script
            && !script.is_file()
        {
            problems.push(("plant.cmms_script".into(), format!("{} is not a file", script.display())));
        }
        if let Some(dir) = &self.output.dir
            && let Err(message) = writable_folder(dir)
        {
            problems.push(("output.dir".into(), message));
        }
        problems
    }
}

/// Whether `dir` is (or can be made) a folder this process writes in.
fn writable_folder(dir: &Path) -> Result<(), String> {
    // The folder, or the nearest of its parents that exists (the run creates the rest).
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("."));
    let metadata = std::fs::metadata(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    if !metadata.is_dir() {
        return Err(format!("{} is not a folder", existing.display()));
    }
    if metadata.permissions().readonly() {
        return Err(format!("{} is read-only", existing.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CameraConfig;

    #[test]
    fn every_missing_thing_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut camera = CameraConfig::new("cam-1", "rtsp://127.0.0.1:8554/cam");
        camera.credentials = Some(crate::config::CredentialsConfig {
            username_env: "DEFECTFLOW_TEST_SURELY_UNSET_USER".into(),
            password_env: "DEFECTFLOW_TEST_SURELY_UNSET_PASSWORD".into(),
        });
        let missing_file = CameraConfig::new("cam-2", format!("file://{}", dir.path().join("absent.mp4").display()));
        let mut config = RunConfig::with_cameras(vec![camera, missing_file]);
        config.model = Some(super::super::ModelConfig { dir: Some(dir.path().join("no-model")), ..Default::default() });
        config.plant.reference = Some(dir.path().join("no-reference"));
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").expect("write");
        config.output.dir = Some(file.join("out"));
        let fields: Vec<String> = config.environment_problems().into_iter().map(|(field, _)| field).collect();
        assert_eq!(
            fields,
            [
                "cameras[0].credentials.username_env",
                "cameras[0].credentials.password_env",
                "cameras[1].url",
                "model.dir",
                "plant.reference",
                "output.dir"
            ]
        );
    }

    #[test]
    fn int8_without_a_calibration_is_named_with_what_to_run() {
        use defectflow_models::detector::Precision;
        let dir = tempfile::tempdir().expect("temp dir");
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/weights");
        let mut card = ModelCard::load(&shipped).expect("the shipped card");
        assert!(card.int8.is_some(), "the shipped card is calibrated");
        card.int8 = None;
        card.save(dir.path()).expect("card");
        std::fs::copy(shipped.join(&card.weights_file), dir.path().join(&card.weights_file)).expect("weights");
        let problems = |model_dir: &std::path::Path| {
            let mut config = RunConfig::with_cameras(Vec::new());
            let model = super::super::ModelConfig { dir: Some(model_dir.to_owned()), ..Default::default() };
            config.model = Some(super::super::ModelConfig { precision: Precision::Int8, ..model });
            config.environment_problems()
        };
        let found = problems(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "model.precision");
        assert!(found[0].1.contains("defectflow quantize"), "{}", found[0].1);
        assert!(problems(&shipped).is_empty());
    }
}
