//! What a target's files look like: the CSV dialect and encoding, the file names, the
//! trigger file and what to do with a file already under the name, per target.

use std::collections::BTreeMap;

use crate::csv_out::{CsvOptions, FileFormat};
use crate::job::Manifest;
use crate::routing::Target;

/// What one target's files look like; a target without variables of its own has the
/// `default` profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub csv: CsvOptions,
    pub file_names: FileNameTemplate,
    pub trigger: Option<TriggerFile>,
}

impl Profile {
    pub fn name(&self) -> &str {
        &self.csv.profile
    }
}

/// Every target's profile: each CSV, file-name and trigger variable `X` can be set for one
/// target as `X_<TARGET>` (`CSV_DELIMITER_PF2=;`), which wins over `X`.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub default: Profile,
    pub targets: BTreeMap<Target, Profile>,
}

impl Profiles {
    /// One profile for every target.
    pub fn uniform(profile: Profile) -> Self {
        Self { default: profile, targets: BTreeMap::new() }
    }

    pub fn for_target(&self, target: &Target) -> &Profile {
        self.targets.get(target).unwrap_or(&self.default)
    }
}

/// The CSV file name for a worksheet: `{fileName}_{yyyyMMddHHmmss}.csv`, with the
/// worksheet (reduced to `A-Za-z0-9_-`) when the job has several. The timestamp is the
/// job's `receivedAt`, so a redelivered job produces the same name. `{fileName}` is the
/// name without a trailing `.csv`, which the template adds back once.
pub fn csv_file_name(template: &FileNameTemplate, manifest: &Manifest, worksheet: &str, several: bool) -> String {
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        manifest.received_at.year(),
        u8::from(manifest.received_at.month()),
        manifest.received_at.day(),
        manifest.received_at.hour(),
        manifest.received_at.minute(),
        manifest.received_at.second()
    );
    let sheet: String =
        worksheet.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    let pattern = if several { &template.several } else { &template.single };
    pattern
        .replace("{fileName}", crate::routing::file_name_stem(&manifest.request.file_name))
        .replace("{worksheet}", &sheet)
        .replace("{timestamp}", &stamp)
        .replace("{jobId}", &manifest.job_id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNameTemplate {
    pub single: String,
    pub several: String,
}

impl Default for FileNameTemplate {
    fn default() -> Self {
        Self {
            single: "{fileName}_{timestamp}.csv".to_owned(),
            several: "{fileName}_{worksheet}_{timestamp}.csv".to_owned(),
        }
    }
}

impl FileNameTemplate {
    pub const PLACEHOLDERS: [&'static str; 4] = ["{fileName}", "{worksheet}", "{timestamp}", "{jobId}"];

    /// The default templates, ending in `.xml` for an XML target.
    pub fn for_format(format: FileFormat) -> Self {
        let csv = Self::default();
        match format {
            FileFormat::Csv => csv,
            FileFormat::Xml => {
                Self { single: csv.single.replace(".csv", ".xml"), several: csv.several.replace(".csv", ".xml") }
            }
        }
    }
}

/// What to do when the final file is already on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingFilePolicy {
    /// Identical (size and SHA-256): recorded as delivered, nothing sent. Different: a
    /// permanent error, the remote file untouched.
    Fail,
    /// Removed and uploaded again, without reading it first.
    Overwrite,
    /// Identical: recorded as delivered. Different: removed and uploaded again.
    SkipIfIdentical,
}

impl std::str::FromStr for ExistingFilePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "overwrite" => Ok(Self::Overwrite),
            "skip-if-identical" => Ok(Self::SkipIfIdentical),
            other => Err(format!("{other:?} is not one of fail, overwrite, skip-if-identical")),
        }
    }
}

/// What a trigger file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerContent {
    Empty,
    /// sha256sum's line for the data file: `<hex>  <name>\n`.
    Sha256,
}

impl std::str::FromStr for TriggerContent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "empty" => Ok(Self::Empty),
            "sha256" => Ok(Self::Sha256),
            other => Err(format!("{other:?} is not empty or sha256")),
        }
    }
}

/// The file SAP's inbound job waits for: written after the data file's rename, and only then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFile {
    /// `{name}`: the data file's name; `{stem}`: the same without `.csv` (or `.xml`).
    pub name_template: String,
    pub content: TriggerContent,
    /// What to do when a trigger of that name is already there.
    pub existing: ExistingFilePolicy,
}

impl TriggerFile {
    pub const PLACEHOLDERS: [&'static str; 2] = ["{name}", "{stem}"];

    /// `done`, `sha256` or a name template; `None` for `none`.
    pub fn parse(
        spec: &str,
        content: Option<TriggerContent>,
        existing: ExistingFilePolicy,
    ) -> Result<Option<Self>, String> {
        let (name_template, implied) = match spec {
            "none" => return Ok(None),
            "done" => ("{name}.done", TriggerContent::Empty),
            "sha256" => ("{name}.sha256", TriggerContent::Sha256),
            template => (template, TriggerContent::Empty),
        };
        let stripped = Self::PLACEHOLDERS.iter().fold(name_template.to_owned(), |t, p| t.replace(p, ""));
        if !Self::PLACEHOLDERS.iter().any(|p| name_template.contains(p)) || stripped.contains(['{', '}', '/']) {
            return Err(format!(
                "{spec:?} is not none, done, sha256, or a name with {{name}} or {{stem}} and no '/' or other placeholder"
            ));
        }
        let trigger = Self { name_template: name_template.to_owned(), content: content.unwrap_or(implied), existing };
        // `{stem}.csv` gives back `x.csv` itself: an empty trigger would replace the data file.
        // Compared without case, as a server may not tell `x.CSV` from `x.csv`.
        let clash = ["x.csv", "x", "x.txt", "x.xml"].into_iter().find(|d| trigger.name_for(d).eq_ignore_ascii_case(d));
        if stripped.is_empty() || clash.is_some() {
            return Err(format!(
                "{spec:?} would name the trigger like the data file ({} for {})",
                trigger.name_for(clash.unwrap_or("x.csv")),
                clash.unwrap_or("x.csv")
            ));
        }
        Ok(Some(trigger))
    }

    /// The trigger's name for a data file.
    pub fn name_for(&self, data_name: &str) -> String {
        let stem = data_name.strip_suffix(".csv").or_else(|| data_name.strip_suffix(".xml")).unwrap_or(data_name);
        self.name_template.replace("{name}", data_name).replace("{stem}", stem)
    }

    /// The trigger's bytes for a data file.
    pub fn content_for(&self, data_name: &str, sha256: &str) -> Vec<u8> {
        match self.content {
            TriggerContent::Empty => Vec::new(),
            TriggerContent::Sha256 => format!("{sha256}  {data_name}\n").into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_file_policies_parse_from_their_documented_names() {
        assert_eq!("skip-if-identical".parse(), Ok(ExistingFilePolicy::SkipIfIdentical));
        assert!("replace".parse::<ExistingFilePolicy>().is_err());
    }
}
