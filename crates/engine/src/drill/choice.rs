//! The drill's choices as types: which backup (`latest`, `random` or a label) and which recovery
//! target (`latest` or `random`). Both parse from text (`FromStr`, which clap uses for the command
//! line) and from the `[drill]` section of the configuration file, with the same spellings, and a
//! refusal says what is accepted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Which backup a drill restores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BackupChoice {
    /// The newest readable backup.
    #[default]
    Latest,
    /// Any retained backup, uniformly.
    Random,
    /// The backup with this label.
    Label(String),
}

impl FromStr for BackupChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "latest" => Ok(Self::Latest),
            "random" => Ok(Self::Random),
            _ if text.trim().is_empty() => Err(
                "the drill's backup choice is empty: give latest, random or a backup label (lifeboat list shows them)"
                    .into(),
            ),
            label => Ok(Self::Label(label.into())),
        }
    }
}

impl fmt::Display for BackupChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Random => f.write_str("random"),
            Self::Label(label) => f.write_str(label),
        }
    }
}

/// Where recovery of a drill's copy stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrillTarget {
    /// The end of the archive.
    #[default]
    Latest,
    /// An LSN between the backup's end and the last archived segment of the unbroken run after it.
    Random,
}

impl FromStr for DrillTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "latest" => Ok(Self::Latest),
            "random" => Ok(Self::Random),
            _ => Err(
                "a drill recovers to `latest` (the end of the archive) or `random` (a random point between the backup's end and the end of the archive)"
                    .into(),
            ),
        }
    }
}

impl fmt::Display for DrillTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Latest => "latest",
            Self::Random => "random",
        })
    }
}

/// `drill.backup` of the configuration file; the error names the key.
pub(super) fn backup_key<'de, D: Deserializer<'de>>(d: D) -> Result<BackupChoice, D::Error> {
    keyed(d, "drill.backup")
}

/// `drill.target` of the configuration file; the error names the key.
pub(super) fn target_key<'de, D: Deserializer<'de>>(d: D) -> Result<DrillTarget, D::Error> {
    keyed(d, "drill.target")
}

fn keyed<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(
    d: D,
    key: &str,
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|why| serde::de::Error::custom(format!("{key} is {text:?}: {why}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_spellings_of_each_choice() {
        for (text, choice) in [
            ("latest", BackupChoice::Latest),
            ("random", BackupChoice::Random),
            (
                "20261123T135711Z",
                BackupChoice::Label("20261123T135711Z".into()),
            ),
        ] {
            assert_eq!(text.parse::<BackupChoice>().unwrap(), choice);
            assert_eq!(choice.to_string(), text);
        }
        assert!(" ".parse::<BackupChoice>().unwrap_err().contains("empty"));
        for (text, target) in [
            ("latest", DrillTarget::Latest),
            ("random", DrillTarget::Random),
        ] {
            assert_eq!(text.parse::<DrillTarget>().unwrap(), target);
            assert_eq!(target.to_string(), text);
        }
        let why = "Latest".parse::<DrillTarget>().unwrap_err();
        assert!(
            why.contains("`latest`") && why.contains("`random`"),
            "{why}"
        );
    }

    #[test]
    fn a_bad_value_in_the_config_names_its_key() {
        #[derive(Debug, Deserialize)]
        struct Section {
            #[serde(deserialize_with = "target_key")]
            _target: DrillTarget,
        }
        let e = serde_json::from_str::<Section>(r#"{"_target":"end"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"drill.target is "end": a drill recovers to `latest`"#),
            "{e}"
        );
    }
}
