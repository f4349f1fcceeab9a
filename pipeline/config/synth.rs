//! What a `synth://` camera URL asks for:
//! `synth://conveyor_pulley?seed=7&fps=15&asset_id=CV-101&defects=crack@5,corrosion@20`.

use defectflow_models::synth::AssetKind;
use defectflow_schemas::DefectClass;

/// What a `synth://` URL asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthParams {
    pub asset_kind: AssetKind,
    pub seed: u64,
    pub fps: u32,
    /// Asset id shown in the scene; defaults to the asset kind.
    pub asset_id: String,
    /// Defect classes and their onsets in seconds after the camera starts.
    pub defects: Vec<(DefectClass, f64)>,
}

impl SynthParams {
    /// Parses `synth://<asset_kind>?seed=..&fps=..&asset_id=..&defects=class@onset,...`.
    pub fn parse(url: &str) -> Result<SynthParams, String> {
        let rest = url.strip_prefix("synth://").ok_or_else(|| format!("`{url}` is not a synth:// URL"))?;
        let (kind, query) = rest.split_once('?').unwrap_or((rest, ""));
        let asset_kind: AssetKind = kind.trim_end_matches('/').parse().map_err(|e| format!("{e}"))?;
        let mut params =
            SynthParams { asset_kind, seed: 1, fps: 15, asset_id: asset_kind.as_str().to_owned(), defects: Vec::new() };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` in `{url}` is not key=value"))?;
            let bad = |what: &str| format!("`{key}={value}` in `{url}`: {what}");
            match key {
                "seed" => params.seed = value.parse().map_err(|_| bad("expected an integer"))?,
                "fps" => {
                    params.fps =
                        value.parse().ok().filter(|f| (1..=120).contains(f)).ok_or_else(|| bad("expected 1 to 120"))?
                }
                "asset_id" => params.asset_id = value.to_owned(),
                "defects" => {
                    for item in value.split(',').filter(|i| !i.is_empty()) {
                        let (class, onset) = item.split_once('@').ok_or_else(|| bad("expected class@onset_seconds"))?;
                        let class = DefectClass::model_class(class).map_err(|e| bad(&format!("{e}")))?;
                        let onset: f64 = onset
                            .parse()
                            .ok()
                            .filter(|o: &f64| *o >= 0.0)
                            .ok_or_else(|| bad("onset must be seconds >= 0"))?;
                        params.defects.push((class, onset));
                    }
                }
                _ => return Err(format!("unknown parameter `{key}` in `{url}` (seed, fps, asset_id, defects)")),
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_parameter() {
        let p =
            SynthParams::parse("synth://gearbox?seed=9&fps=10&asset_id=GB-2&defects=crack@5,wear@12.5").expect("valid");
        assert_eq!(p.asset_kind, AssetKind::Gearbox);
        assert_eq!((p.seed, p.fps, p.asset_id.as_str()), (9, 10, "GB-2"));
        assert_eq!(p.defects, vec![(DefectClass::Crack, 5.0), (DefectClass::Wear, 12.5)]);
    }

    #[test]
    fn names_what_is_wrong() {
        for (url, needle) in [
            ("synth://boiler", "unknown asset kind `boiler`"),
            ("synth://belt?fps=0", "fps=0"),
            ("synth://belt?defects=dent@3", "unknown defect class `dent`"),
            ("synth://belt?colour=red", "unknown parameter `colour`"),
        ] {
            let err = SynthParams::parse(url).expect_err(url);
            assert!(err.contains(needle), "{url}: {err}");
        }
    }
}
