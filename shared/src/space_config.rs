//! The Space config: the YAML front matter of a Space's README.md, validated in one pass into typed values.
//!
//! Every problem is collected with its line and key; unknown keys are kept and warned about. Hostile input
//! (oversized files, non-UTF-8 bytes, alias bombs, deep nesting) is refused quickly by `read_front_matter` and the
//! bounded loader in `yaml`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::duration;
use crate::flavor::Catalog;
use crate::names::{RepoId, check_model_or_dataset_id, check_namespace};
use crate::yaml::{self, Node, Value};

/// Largest README.md read, in bytes.
pub const MAX_README_BYTES: usize = 1 << 20;

/// Pseudo-keys for problems that are not about one key.
pub const KEY_FILE: &str = "<file>";
pub const KEY_FRONT_MATTER: &str = "<front-matter>";
pub const KEY_YAML: &str = "<yaml>";

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// 1-based line in README.md.
    pub line: usize,
    /// The key it is about (`custom_headers.cross-origin-opener-policy`, `tags[2]`), or a pseudo-key.
    pub key: String,
    pub message: String,
}

impl Problem {
    /// `PATH:LINE: KEY: message`, with `warning: ` before the message of a warning.
    pub fn render(&self, path: &str) -> String {
        let prefix = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        format!(
            "{path}:{}: {}: {prefix}{}",
            self.line, self.key, self.message
        )
    }
}

/// What validating a README gives: the config when there were no errors, and every problem found.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: Option<SpaceConfig>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }

    pub fn is_valid(&self) -> bool {
        self.config.is_some()
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What runs the Space.
    Sdk { Gradio = "gradio", Streamlit = "streamlit", Docker = "docker", Static = "static" }
);
string_enum!(
    /// Thumbnail gradient colors.
    Color {
        Red = "red", Yellow = "yellow", Green = "green", Blue = "blue",
        Indigo = "indigo", Purple = "purple", Pink = "pink", Gray = "gray",
    }
);
string_enum!(
    /// The Space page header.
    Header { Mini = "mini", Default = "default" }
);
string_enum!(
    /// Legacy persistent storage tiers (accepted, no longer provisioned).
    StorageTier { Small = "small", Medium = "medium", Large = "large" }
);

/// OAuth scopes a Space may ask for (`openid` and `profile` are always granted).
pub const OAUTH_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "read-billing",
    "read-memberships",
    "read-repos",
    "gated-repos",
    "contribute-repos",
    "write-repos",
    "manage-repos",
    "read-collections",
    "write-collections",
    "inference-api",
    "read-endpoints",
    "write-endpoints",
    "jobs",
    "webhooks",
    "write-discussions",
];

/// The headers `custom_headers` may set and the values each accepts.
pub const CUSTOM_HEADERS: &[(&str, &[&str])] = &[
    (
        "cross-origin-embedder-policy",
        &["unsafe-none", "require-corp", "credentialless"],
    ),
    (
        "cross-origin-opener-policy",
        &["same-origin", "same-origin-allow-popups", "unsafe-none"],
    ),
    (
        "cross-origin-resource-policy",
        &["same-site", "same-origin", "cross-origin"],
    ),
];

/// Default and limits of the keys with numbers in them.
pub const DEFAULT_PYTHON_VERSION: &str = "3.10";
pub const DEFAULT_APP_PORT: u16 = 7860;
pub const STREAMLIT_PORT: u16 = 8501;
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const MAX_STARTUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_OAUTH_EXPIRATION_MINUTES: u32 = 480;
pub const MAX_OAUTH_EXPIRATION_MINUTES: u32 = 43_200;
pub const MAX_SHORT_DESCRIPTION_CHARS: usize = 60;

/// `hf_oauth: true` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth {
    /// Scopes granted, always including `openid` and `profile`.
    pub scopes: Vec<String>,
    pub expiration_minutes: u32,
    /// Organizations whose members may log in; empty means anyone.
    pub authorized_orgs: Vec<String>,
}

/// One `preload_from_hub` entry: a repo to download at build time, optionally only some files at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preload {
    pub repo_id: String,
    pub files: Option<Vec<String>>,
    pub commit: Option<String>,
}

/// A validated Space config. Defaults are filled in; unknown keys are kept in `extra`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceConfig {
    pub title: Option<String>,
    pub emoji: Option<String>,
    pub color_from: Option<Color>,
    pub color_to: Option<Color>,
    pub sdk: Sdk,
    pub python_version: String,
    pub sdk_version: Option<String>,
    pub suggested_hardware: Option<String>,
    pub suggested_storage: Option<StorageTier>,
    /// The main file; defaults to `app.py` for Gradio and Streamlit and `index.html` for static Spaces.
    pub app_file: Option<String>,
    pub app_build_command: Option<String>,
    /// The port the app listens on: `app_port`, or the SDK's default.
    pub app_port: u16,
    pub base_path: Option<String>,
    pub full_width: bool,
    pub header: Header,
    pub short_description: Option<String>,
    pub models: Vec<String>,
    pub datasets: Vec<String>,
    pub tags: Vec<String>,
    pub thumbnail: Option<String>,
    pub pinned: bool,
    pub license: Vec<String>,
    pub oauth: Option<OAuth>,
    pub disable_embedding: bool,
    pub startup_duration_timeout: Duration,
    /// Header name (lowercase) to value.
    pub custom_headers: BTreeMap<String, String>,
    pub preload_from_hub: Vec<Preload>,
    pub duplicated_from: Option<String>,
    pub meta_title: Option<String>,
    pub description: Option<String>,
    /// Keys this version does not know, kept as written.
    pub extra: BTreeMap<String, Node>,
}

impl SpaceConfig {
    /// The app file to run or serve, with the SDK's default applied (none for Docker).
    pub fn effective_app_file(&self) -> Option<&str> {
        match (&self.app_file, self.sdk) {
            (Some(f), _) => Some(f),
            (None, Sdk::Gradio | Sdk::Streamlit) => Some("app.py"),
            (None, Sdk::Static) => Some("index.html"),
            (None, Sdk::Docker) => None,
        }
    }
}

/// Every key the config knows, for did-you-mean hints.
const KNOWN_KEYS: &[&str] = &[
    "title",
    "emoji",
    "colorFrom",
    "colorTo",
    "sdk",
    "python_version",
    "sdk_version",
    "suggested_hardware",
    "suggested_storage",
    "app_file",
    "app_build_command",
    "app_port",
    "base_path",
    "fullWidth",
    "header",
    "short_description",
    "models",
    "datasets",
    "tags",
    "thumbnail",
    "pinned",
    "license",
    "hf_oauth",
    "hf_oauth_scopes",
    "hf_oauth_expiration_minutes",
    "hf_oauth_authorized_org",
    "disable_embedding",
    "startup_duration_timeout",
    "custom_headers",
    "preload_from_hub",
    "duplicated_from",
    "metaTitle",
    "description",
];

/// Validates a README.md given as raw bytes. `catalog` says which `suggested_hardware` values exist.
pub fn validate_readme(bytes: &[u8], catalog: &Catalog) -> Report {
    match read_front_matter(bytes) {
        Err(problem) => Report {
            config: None,
            problems: vec![problem],
        },
        Ok(fm) => validate_yaml(&fm.yaml, fm.first_line, catalog),
    }
}

/// The YAML between the README's `---` lines and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontMatter {
    pub yaml: String,
    pub first_line: usize,
}

/// Finds the front matter: size and encoding checks, BOM and CRLF accepted, `---` ... `---` (or `...`).
pub fn read_front_matter(bytes: &[u8]) -> Result<FrontMatter, Problem> {
    let problem = |line, key: &str, message: String| Problem {
        severity: Severity::Error,
        line,
        key: key.into(),
        message,
    };
    if bytes.len() > MAX_README_BYTES {
        return Err(problem(
            1,
            KEY_FILE,
            format!(
                "README.md is {} bytes; the limit is {} bytes (1 MiB)",
                bytes.len(),
                MAX_README_BYTES
            ),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        let col = 1 + valid.iter().rev().take_while(|&&b| b != b'\n').count();
        let bad = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
        problem(
            line,
            KEY_FILE,
            format!("README.md is not valid UTF-8 (byte 0x{bad:02X} at column {col})"),
        )
    })?;
    let text = text.replace("\r\n", "\n");
    let mut lines = text.split('\n');
    if lines.next().map(str::trim_end) != Some("---") {
        return Err(problem(
            1,
            KEY_FRONT_MATTER,
            "README.md must start with YAML front matter: a `---` line, the config, then `---`"
                .into(),
        ));
    }
    let mut yaml = String::new();
    for line in lines {
        if matches!(line.trim_end(), "---" | "...") {
            return Ok(FrontMatter {
                yaml,
                first_line: 2,
            });
        }
        yaml.push_str(line);
        yaml.push('\n');
    }
    Err(problem(
        1,
        KEY_FRONT_MATTER,
        "the front matter opened on line 1 is never closed with a `---` line".into(),
    ))
}

/// Validates front-matter YAML whose first line is line `first_line` of the README.
pub fn validate_yaml(text: &str, first_line: usize, catalog: &Catalog) -> Report {
    let root = match yaml::load(text, first_line, yaml::Limits::default()) {
        Ok(root) => root,
        Err(e) => {
            let problem = Problem {
                severity: Severity::Error,
                line: e.line,
                key: e.key.unwrap_or_else(|| KEY_YAML.into()),
                message: e.message,
            };
            return Report {
                config: None,
                problems: vec![problem],
            };
        }
    };
    let fm_line = first_line.saturating_sub(1).max(1);
    let entries = match root {
        None => Vec::new(),
        Some(Node {
            value: Value::Mapping(entries),
            ..
        }) => entries,
        Some(other) => {
            let problem = Problem {
                severity: Severity::Error,
                line: other.line,
                key: KEY_FRONT_MATTER.into(),
                message: format!(
                    "the front matter must be a mapping of keys, found {}",
                    other.kind_name()
                ),
            };
            return Report {
                config: None,
                problems: vec![problem],
            };
        }
    };
    let mut v = Validator {
        problems: Vec::new(),
        catalog,
    };
    let config = v.config(&entries, fm_line);
    let mut problems = v.problems;
    problems.sort_by(|a, b| (a.line, a.severity, &a.key).cmp(&(b.line, b.severity, &b.key)));
    let has_errors = problems.iter().any(|p| p.severity == Severity::Error);
    Report {
        config: if has_errors { None } else { config },
        problems,
    }
}

struct Validator<'a> {
    problems: Vec<Problem>,
    catalog: &'a Catalog,
}

impl Validator<'_> {
    fn error(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Error,
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, entries: &[(Node, Node)], fm_line: usize) -> Option<SpaceConfig> {
        let mut by_key: BTreeMap<&str, (&Node, &Node)> = BTreeMap::new();
        for (k, v) in entries {
            let key = k.as_scalar().unwrap_or_default();
            by_key.insert(key, (k, v));
        }
        let value = |key: &str| by_key.get(key).map(|(_, v)| *v).filter(|v| !v.is_null());

        let sdk = match value("sdk") {
            None => {
                let line = by_key.get("sdk").map_or(fm_line, |(k, _)| k.line);
                self.error(
                    line,
                    "sdk",
                    format!("missing; set it to one of {}", Sdk::ALL.join(", ")),
                );
                None
            }
            Some(node) => self.one_of(node, "sdk", Sdk::ALL).and_then(Sdk::parse),
        };

        let title = value("title").and_then(|n| self.string(n, "title"));
        let emoji = value("emoji").and_then(|n| self.emoji(n));
        let color_from = value("colorFrom")
            .and_then(|n| self.one_of(n, "colorFrom", Color::ALL))
            .and_then(Color::parse);
        let color_to = value("colorTo")
            .and_then(|n| self.one_of(n, "colorTo", Color::ALL))
            .and_then(Color::parse);
        let python_version = value("python_version").and_then(|n| self.python_version(n));
        let sdk_version = value("sdk_version").and_then(|n| self.sdk_version(n));
        let suggested_hardware = value("suggested_hardware").and_then(|n| self.hardware(n));
        let suggested_storage = value("suggested_storage")
            .and_then(|n| self.one_of(n, "suggested_storage", StorageTier::ALL))
            .and_then(StorageTier::parse);
        if let (Some(_), Some(node)) = (suggested_storage, value("suggested_storage")) {
            self.warn(
                node.line,
                "suggested_storage",
                "ignored: persistent storage tiers are no longer provisioned",
            );
        }
        let app_file = value("app_file").and_then(|n| self.relative_path(n, "app_file"));
        let app_build_command =
            value("app_build_command").and_then(|n| self.string(n, "app_build_command"));
        let app_port = value("app_port").and_then(|n| self.port(n));
        let base_path = value("base_path").and_then(|n| self.base_path(n));
        let full_width = value("fullWidth").and_then(|n| self.boolean(n, "fullWidth"));
        let header = value("header")
            .and_then(|n| self.one_of(n, "header", Header::ALL))
            .and_then(Header::parse);
        let short_description = value("short_description").and_then(|n| self.short_description(n));
        let models = value("models")
            .map(|n| self.repo_list(n, "models"))
            .unwrap_or_default();
        let datasets = value("datasets")
            .map(|n| self.repo_list(n, "datasets"))
            .unwrap_or_default();
        let tags = value("tags")
            .map(|n| self.string_list(n, "tags"))
            .unwrap_or_default();
        let thumbnail = value("thumbnail").and_then(|n| self.url(n, "thumbnail"));
        let pinned = value("pinned").and_then(|n| self.boolean(n, "pinned"));
        let license = value("license")
            .map(|n| self.string_or_list(n, "license"))
            .unwrap_or_default();
        let oauth = self.oauth(&value);
        let disable_embedding =
            value("disable_embedding").and_then(|n| self.boolean(n, "disable_embedding"));
        let startup_duration_timeout =
            value("startup_duration_timeout").and_then(|n| self.startup_timeout(n));
        let custom_headers = value("custom_headers")
            .map(|n| self.custom_headers(n))
            .unwrap_or_default();
        let preload_from_hub = value("preload_from_hub")
            .map(|n| self.preloads(n))
            .unwrap_or_default();
        let duplicated_from =
            value("duplicated_from").and_then(|n| self.space_id(n, "duplicated_from"));
        let meta_title = value("metaTitle").and_then(|n| self.string(n, "metaTitle"));
        let description = value("description").and_then(|n| self.string(n, "description"));

        let mut extra = BTreeMap::new();
        for (k, v) in entries {
            let key = k.as_scalar().unwrap_or_default();
            if KNOWN_KEYS.contains(&key) {
                continue;
            }
            if key == "hf_oauth_redirect_path" {
                self.warn(
                    k.line,
                    key,
                    "no longer used: OAuth redirects go to any URL on the Space (kept as is)",
                );
            } else {
                let hint = closest_key(key)
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                self.warn(k.line, key, format!("unknown key (kept as is){hint}"));
            }
            extra.insert(key.to_owned(), v.clone());
        }

        let sdk = sdk?;
        self.sdk_specific(sdk, &value);
        let wanted = match sdk {
            Sdk::Gradio | Sdk::Streamlit => Some((&[".py"][..], "runs a Python file")),
            Sdk::Static => Some((&[".html", ".htm"][..], "serves an HTML file")),
            Sdk::Docker => None,
        };
        if let (Some((suffixes, what)), Some(file), Some(node)) =
            (wanted, &app_file, value("app_file"))
            && !suffixes.iter().any(|s| file.ends_with(s))
        {
            self.error(
                node.line,
                "app_file",
                format!(
                    "a {sdk} Space {what}; `{file}` does not end in {}",
                    suffixes[0]
                ),
            );
        }
        let default_port = if sdk == Sdk::Streamlit {
            STREAMLIT_PORT
        } else {
            DEFAULT_APP_PORT
        };

        Some(SpaceConfig {
            title,
            emoji,
            color_from,
            color_to,
            sdk,
            python_version: python_version.unwrap_or_else(|| DEFAULT_PYTHON_VERSION.into()),
            sdk_version,
            suggested_hardware,
            suggested_storage,
            app_file,
            app_build_command,
            app_port: app_port.unwrap_or(default_port),
            base_path,
            full_width: full_width.unwrap_or(true),
            header: header.unwrap_or(Header::Default),
            short_description,
            models,
            datasets,
            tags,
            thumbnail,
            pinned: pinned.unwrap_or(false),
            license,
            oauth,
            disable_embedding: disable_embedding.unwrap_or(false),
            startup_duration_timeout: startup_duration_timeout.unwrap_or(DEFAULT_STARTUP_TIMEOUT),
            custom_headers,
            preload_from_hub,
            duplicated_from,
            meta_title,
            description,
            extra,
        })
    }

    /// Warnings for keys that the chosen SDK ignores.
    fn sdk_specific<'n>(&mut self, sdk: Sdk, value: &dyn Fn(&str) -> Option<&'n Node>) {
        let ignored: &[&str] = match sdk {
            Sdk::Gradio | Sdk::Streamlit => &["app_build_command"],
            Sdk::Docker => &[
                "python_version",
                "sdk_version",
                "app_file",
                "app_build_command",
            ],
            Sdk::Static => &[
                "python_version",
                "sdk_version",
                "app_port",
                "startup_duration_timeout",
                "preload_from_hub",
            ],
        };
        for key in ignored {
            if let Some(node) = value(key) {
                self.warn(node.line, key, format!("ignored for {sdk} Spaces"));
            }
        }
    }

    fn scalar<'n>(&mut self, node: &'n Node, key: &str, what: &str) -> Option<(&'n str, bool)> {
        match &node.value {
            Value::Scalar { text, plain } => Some((text, *plain)),
            _ => {
                self.error(
                    node.line,
                    key,
                    format!("expected {what}, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        let (text, _) = self.scalar(node, key, "a string")?;
        if text.trim().is_empty() {
            self.error(node.line, key, "must not be empty");
            return None;
        }
        Some(text.to_owned())
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match self.scalar(node, key, "true or false")? {
            ("true" | "True" | "TRUE", true) => Some(true),
            ("false" | "False" | "FALSE", true) => Some(false),
            (text, _) => {
                self.error(
                    node.line,
                    key,
                    format!("expected true or false, found `{text}`"),
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, key: &str) -> Option<i64> {
        let (text, plain) = self.scalar(node, key, "a whole number")?;
        match text.parse::<i64>() {
            Ok(n) if plain => Some(n),
            _ => {
                self.error(
                    node.line,
                    key,
                    format!("expected a whole number, found `{text}`"),
                );
                None
            }
        }
    }

    fn one_of<'s>(&mut self, node: &Node, key: &str, allowed: &'s [&'s str]) -> Option<&'s str> {
        let (text, _) = self.scalar(node, key, "a string")?;
        match allowed.iter().find(|a| **a == text) {
            Some(a) => Some(a),
            None => {
                let hint = allowed
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(text))
                    .map(|a| format!(" (values are lowercase: `{a}`)"))
                    .unwrap_or_default();
                self.error(
                    node.line,
                    key,
                    format!("`{text}` is not one of {}{hint}", allowed.join(", ")),
                );
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, key: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Sequence(items) => Some(items),
            _ => {
                self.error(
                    node.line,
                    key,
                    format!("expected a list, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, key: &str) -> Vec<String> {
        let items = self.list(node, key).unwrap_or_default();
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &format!("{key}[{i}]")))
            .collect()
    }

    fn string_or_list(&mut self, node: &Node, key: &str) -> Vec<String> {
        match node.value {
            Value::Sequence(_) => self.string_list(node, key),
            _ => self.string(node, key).into_iter().collect(),
        }
    }

    fn repo_list(&mut self, node: &Node, key: &str) -> Vec<String> {
        let items = self.list(node, key).unwrap_or_default();
        let mut ids = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            if let Some(id) = self.string(item, &item_key) {
                match check_model_or_dataset_id(&id) {
                    Ok(()) => ids.push(id),
                    Err(e) => self.error(item.line, &item_key, e.to_string()),
                }
            }
        }
        ids
    }

    fn emoji(&mut self, node: &Node) -> Option<String> {
        let text = self.string(node, "emoji")?;
        let n_chars = text.chars().count();
        if n_chars > 16
            || text
                .chars()
                .any(|c| c.is_ascii() || c.is_alphanumeric() || c.is_whitespace())
        {
            self.error(
                node.line,
                "emoji",
                format!("`{text}` is not a single emoji"),
            );
            return None;
        }
        Some(text)
    }

    fn python_version(&mut self, node: &Node) -> Option<String> {
        let text = self.string(node, "python_version")?;
        let parts: Vec<&str> = text.split('.').collect();
        let numeric = parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if !(numeric && parts[0] == "3" && (2..=3).contains(&parts.len())) {
            self.error(
                node.line,
                "python_version",
                format!("`{text}` is not a Python version like 3.10 or 3.10.13"),
            );
            return None;
        }
        Some(text)
    }

    fn sdk_version(&mut self, node: &Node) -> Option<String> {
        let text = self.string(node, "sdk_version")?;
        let starts_with_digit = text.starts_with(|c: char| c.is_ascii_digit());
        let allowed = text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
        if !(starts_with_digit && allowed) || text.len() > 64 {
            self.error(
                node.line,
                "sdk_version",
                format!("`{text}` is not a version like 4.44.1"),
            );
            return None;
        }
        Some(text)
    }

    fn hardware(&mut self, node: &Node) -> Option<String> {
        let text = self.string(node, "suggested_hardware")?;
        if !self.catalog.contains(&text) {
            let names: Vec<&str> = self.catalog.names().collect();
            self.error(
                node.line,
                "suggested_hardware",
                format!(
                    "`{text}` is not a flavor here; flavors: {}",
                    names.join(", ")
                ),
            );
            return None;
        }
        Some(text)
    }

    fn relative_path(&mut self, node: &Node, key: &str) -> Option<String> {
        let text = self.string(node, key)?;
        let bad = text.starts_with('/')
            || text.contains('\\')
            || text.contains('\0')
            || text.split('/').any(|seg| seg.is_empty() || seg == "..");
        if bad {
            self.error(
                node.line,
                key,
                format!("`{text}` must be a path inside the repo, like `app.py` or `src/app.py`"),
            );
            return None;
        }
        Some(text)
    }

    fn port(&mut self, node: &Node) -> Option<u16> {
        let n = self.integer(node, "app_port")?;
        match u16::try_from(n) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.error(
                    node.line,
                    "app_port",
                    format!("{n} is not a port between 1 and 65535"),
                );
                None
            }
        }
    }

    fn base_path(&mut self, node: &Node) -> Option<String> {
        let text = self.string(node, "base_path")?;
        if !text.starts_with('/') || text.chars().any(char::is_whitespace) {
            self.error(
                node.line,
                "base_path",
                format!("`{text}` must be a URL path starting with `/`"),
            );
            return None;
        }
        Some(text)
    }

    fn short_description(&mut self, node: &Node) -> Option<String> {
        let text = self.string(node, "short_description")?;
        let n_chars = text.chars().count();
        if n_chars > MAX_SHORT_DESCRIPTION_CHARS {
            self.error(
                node.line,
                "short_description",
                format!("is {n_chars} characters; the limit is {MAX_SHORT_DESCRIPTION_CHARS}"),
            );
            return None;
        }
        Some(text)
    }

    fn url(&mut self, node: &Node, key: &str) -> Option<String> {
        let text = self.string(node, key)?;
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"));
        let host_ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
        if !host_ok || text.chars().any(char::is_whitespace) {
            self.error(node.line, key, format!("`{text}` is not an http(s) URL"));
            return None;
        }
        Some(text)
    }

    fn space_id(&mut self, node: &Node, key: &str) -> Option<String> {
        let text = self.string(node, key)?;
        match RepoId::parse(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                self.error(node.line, key, e.to_string());
                None
            }
        }
    }

    fn oauth<'n>(&mut self, value: &dyn Fn(&str) -> Option<&'n Node>) -> Option<OAuth> {
        let enabled = value("hf_oauth")
            .and_then(|n| self.boolean(n, "hf_oauth"))
            .unwrap_or(false);
        let mut scopes = vec!["openid".to_owned(), "profile".to_owned()];
        if let Some(node) = value("hf_oauth_scopes") {
            for (i, item) in self
                .list(node, "hf_oauth_scopes")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let key = format!("hf_oauth_scopes[{i}]");
                if let Some(scope) = self.one_of(item, &key, OAUTH_SCOPES)
                    && !scopes.iter().any(|s| s == scope)
                {
                    scopes.push(scope.to_owned());
                }
            }
        }
        let expiration = value("hf_oauth_expiration_minutes").and_then(|node| {
            let n = self.integer(node, "hf_oauth_expiration_minutes")?;
            match u32::try_from(n) {
                Ok(m) if (1..=MAX_OAUTH_EXPIRATION_MINUTES).contains(&m) => Some(m),
                _ => {
                    self.error(node.line, "hf_oauth_expiration_minutes", format!("{n} is not between 1 and {MAX_OAUTH_EXPIRATION_MINUTES} minutes (30 days)"));
                    None
                }
            }
        });
        let orgs = value("hf_oauth_authorized_org").map(|node| {
            let orgs = self.string_or_list(node, "hf_oauth_authorized_org");
            for org in &orgs {
                if let Err(e) = check_namespace(org) {
                    self.error(node.line, "hf_oauth_authorized_org", e.to_string());
                }
            }
            orgs
        });
        if !enabled {
            for key in [
                "hf_oauth_scopes",
                "hf_oauth_expiration_minutes",
                "hf_oauth_authorized_org",
            ] {
                if let Some(node) = value(key) {
                    self.warn(node.line, key, "ignored because `hf_oauth` is not true");
                }
            }
            return None;
        }
        Some(OAuth {
            scopes,
            expiration_minutes: expiration.unwrap_or(DEFAULT_OAUTH_EXPIRATION_MINUTES),
            authorized_orgs: orgs.unwrap_or_default(),
        })
    }

    fn startup_timeout(&mut self, node: &Node) -> Option<Duration> {
        let text = self.string(node, "startup_duration_timeout")?;
        match duration::parse(&text) {
            Ok(d) if d.is_zero() => {
                self.error(
                    node.line,
                    "startup_duration_timeout",
                    "must be longer than zero",
                );
                None
            }
            Ok(d) if d > MAX_STARTUP_TIMEOUT => {
                self.error(
                    node.line,
                    "startup_duration_timeout",
                    format!("`{text}` is longer than the limit of 24h"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node.line, "startup_duration_timeout", e.to_string());
                None
            }
        }
    }

    fn custom_headers(&mut self, node: &Node) -> BTreeMap<String, String> {
        let mut headers = BTreeMap::new();
        let Value::Mapping(entries) = &node.value else {
            self.error(
                node.line,
                "custom_headers",
                format!(
                    "expected a mapping of header names to values, found {}",
                    node.kind_name()
                ),
            );
            return headers;
        };
        for (k, v) in entries {
            let name = k.as_scalar().unwrap_or_default();
            let key = format!("custom_headers.{name}");
            let Some((_, allowed)) = CUSTOM_HEADERS.iter().find(|(h, _)| *h == name) else {
                let names: Vec<&str> = CUSTOM_HEADERS.iter().map(|(h, _)| *h).collect();
                let case = if CUSTOM_HEADERS
                    .iter()
                    .any(|(h, _)| h.eq_ignore_ascii_case(name))
                {
                    " (header names must be lowercase)"
                } else {
                    ""
                };
                self.error(
                    k.line,
                    &key,
                    format!(
                        "`{name}` cannot be set{case}; allowed headers: {}",
                        names.join(", ")
                    ),
                );
                continue;
            };
            if let Some(value) = self.one_of(v, &key, allowed) {
                headers.insert(name.to_owned(), value.to_owned());
            }
        }
        headers
    }

    fn preloads(&mut self, node: &Node) -> Vec<Preload> {
        let items = self.list(node, "preload_from_hub").unwrap_or_default();
        let mut preloads = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("preload_from_hub[{i}]");
            let Some(text) = self.string(item, &key) else {
                continue;
            };
            match parse_preload(&text) {
                Ok(p) => preloads.push(p),
                Err(message) => self.error(item.line, &key, message),
            }
        }
        preloads
    }
}

/// Parses `repo_id`, `repo_id file1,file2` or `repo_id file1,file2 <40-hex commit>`.
pub fn parse_preload(text: &str) -> Result<Preload, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() > 3 {
        return Err(format!(
            "`{text}` has {} parts; expected `repo_id [file1,file2] [commit_sha]`",
            parts.len()
        ));
    }
    let repo_id = parts[0];
    check_model_or_dataset_id(repo_id).map_err(|e| e.to_string())?;
    let files = match parts.get(1) {
        None => None,
        Some(list) => {
            let files: Vec<String> = list.split(',').map(str::to_owned).collect();
            if let Some(bad) = files.iter().find(|f| {
                f.is_empty()
                    || f.starts_with('/')
                    || f.split('/').any(|s| s == ".." || s.is_empty())
            }) {
                return Err(format!(
                    "`{bad}` in `{list}` is not a file path inside the repo (list files as a,b,c)"
                ));
            }
            Some(files)
        }
    };
    let commit = match parts.get(2) {
        None => None,
        Some(sha) if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(sha.to_ascii_lowercase())
        }
        Some(sha) => return Err(format!("`{sha}` is not a full commit sha (40 hex digits)")),
    };
    Ok(Preload {
        repo_id: repo_id.to_owned(),
        files,
        commit,
    })
}

/// The known key nearest to a misspelled one, if it is close.
fn closest_key(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Report {
        validate_readme(text.as_bytes(), &Catalog::huggingface())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let r = check("---\nsdk: gradio\n---\n# Hello\n");
        let c = r.config.unwrap();
        assert_eq!(c.sdk, Sdk::Gradio);
        assert_eq!(c.python_version, "3.10");
        assert_eq!(c.app_port, 7860);
        assert_eq!(c.effective_app_file(), Some("app.py"));
        assert!(c.full_width);
        assert_eq!(c.startup_duration_timeout, Duration::from_secs(1800));
        assert!(r.problems.is_empty());
    }

    #[test]
    fn full_config_parses_every_key() {
        let text = "---\ntitle: My Space\nemoji: 🚀\ncolorFrom: indigo\ncolorTo: pink\nsdk: gradio\n\
            python_version: 3.11\nsdk_version: 4.44.1\nsuggested_hardware: t4-small\napp_file: src/app.py\n\
            app_port: 7861\nbase_path: /ui\nfullWidth: false\nheader: mini\nshort_description: Fast demo\n\
            models: [openai/whisper-tiny, gpt2]\ndatasets: [squad]\ntags: [audio, demo]\n\
            thumbnail: https://example.com/t.png\npinned: true\nlicense: mit\nhf_oauth: true\n\
            hf_oauth_scopes: [email, read-repos]\nhf_oauth_expiration_minutes: 60\nhf_oauth_authorized_org: [acme]\n\
            disable_embedding: true\nstartup_duration_timeout: 1h30m\ncustom_headers:\n  cross-origin-opener-policy: same-origin\n\
            preload_from_hub:\n  - openai/whisper-tiny\n  - gpt2 config.json,model.safetensors 0123456789abcdef0123456789abcdef01234567\n\
            duplicated_from: someone/original\n---\n";
        let r = check(text);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let c = r.config.unwrap();
        assert_eq!(c.python_version, "3.11");
        assert_eq!(c.emoji.as_deref(), Some("🚀"));
        assert_eq!(c.color_from, Some(Color::Indigo));
        assert_eq!(c.app_port, 7861);
        assert!(!c.full_width);
        assert_eq!(c.header, Header::Mini);
        assert_eq!(c.models, ["openai/whisper-tiny", "gpt2"]);
        assert_eq!(c.license, ["mit"]);
        let oauth = c.oauth.unwrap();
        assert_eq!(oauth.scopes, ["openid", "profile", "email", "read-repos"]);
        assert_eq!(oauth.expiration_minutes, 60);
        assert_eq!(c.startup_duration_timeout, Duration::from_secs(5400));
        assert_eq!(
            c.custom_headers["cross-origin-opener-policy"],
            "same-origin"
        );
        assert_eq!(
            c.preload_from_hub[1].files.as_deref(),
            Some(&["config.json".to_string(), "model.safetensors".to_string()][..])
        );
        assert_eq!(
            c.preload_from_hub[1].commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(
            c.preload_from_hub[0],
            Preload {
                repo_id: "openai/whisper-tiny".into(),
                files: None,
                commit: None
            }
        );
    }

    #[test]
    fn bom_and_crlf_are_accepted() {
        let r = check("\u{feff}---\r\nsdk: static\r\ntitle: x\r\n---\r\nbody\r\n");
        assert_eq!(r.config.unwrap().title.as_deref(), Some("x"));
    }

    #[test]
    fn unknown_keys_are_kept_with_a_warning() {
        let r = check("---\nsdk: docker\ncolourFrom: red\nmy_key: [1]\n---\n");
        let c = r.config.clone().unwrap();
        assert!(c.extra.contains_key("my_key"));
        let w: Vec<_> = r
            .warnings()
            .map(|p| (p.line, p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(w[0].0, 3);
        assert!(w[0].2.contains("did you mean `colorFrom`"), "{w:?}");
        assert_eq!((w[1].0, w[1].1), (4, "my_key"));
    }

    #[test]
    fn streamlit_defaults_to_its_port() {
        assert_eq!(
            check("---\nsdk: streamlit\n---\n").config.unwrap().app_port,
            8501
        );
    }

    #[test]
    fn quoted_booleans_and_numbers_are_refused() {
        let r = check("---\nsdk: gradio\npinned: \"true\"\napp_port: \"80\"\n---\n");
        let keys: Vec<_> = r.errors().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(keys, [(3, "pinned"), (4, "app_port")]);
    }

    #[test]
    fn render_format() {
        let p = Problem {
            severity: Severity::Warning,
            line: 3,
            key: "x".into(),
            message: "m".into(),
        };
        assert_eq!(p.render("a/README.md"), "a/README.md:3: x: warning: m");
    }

    #[test]
    fn closest_key_hints() {
        assert_eq!(closest_key("colourFrom"), Some("colorFrom"));
        assert_eq!(closest_key("app_ports"), Some("app_port"));
        assert_eq!(closest_key("completely_else"), None);
    }
}
