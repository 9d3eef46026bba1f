//! Finds likely credentials in pushed files, so the pusher can be warned. A finding names the file, the line and
//! the kind of credential; it never carries the matched text.

use std::sync::LazyLock;

use regex::Regex;

/// Files larger than this are not scanned (they are data, not config).
pub const MAX_SCANNED_BYTES: usize = 1 << 20;

/// One likely credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    /// 1-based.
    pub line: usize,
    pub kind: &'static str,
}

impl Finding {
    /// `PATH:LINE: looks like KIND`, for git remote messages and `X-HF-Warning`.
    pub fn render(&self) -> String {
        format!(
            "{}:{}: looks like {}; if it is real, revoke it and use a Space secret instead",
            self.path, self.line, self.kind
        )
    }
}

/// Patterns that are credentials by their shape alone.
static SHAPES: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        ("a Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}\b"),
        ("an AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        ("a GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
        ("a Google API key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
        ("a Slack token", r"\bxox[abprs]-[0-9A-Za-z\-]{10,}"),
        ("an OpenAI API key", r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{32,}"),
        (
            "a private key",
            r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY( BLOCK)?-----",
        ),
    ]
    .into_iter()
    .filter_map(|(kind, re)| Regex::new(re).ok().map(|re| (kind, re)))
    .collect()
});

/// `NAME = value` or `NAME: value` where the name says it holds a secret.
static ASSIGNMENT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b([A-Z0-9_]*(?:_TOKEN|_KEY|SECRET[A-Z0-9_]*|PASSWORD|_PASSWD|_PWD))\b["']?\s*[:=]\s*["']?([^\s"'`,;]+)"#,
    )
    .ok()
});

/// Scans one file's bytes. Binary files (a NUL in the first 8000 bytes) and files over `MAX_SCANNED_BYTES` are
/// skipped.
pub fn scan(path: &str, bytes: &[u8]) -> Vec<Finding> {
    if bytes.len() > MAX_SCANNED_BYTES || bytes.iter().take(8000).any(|b| *b == 0) {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(bytes);
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let kind = SHAPES
            .iter()
            .find(|(_, re)| re.is_match(line))
            .map(|(kind, _)| *kind)
            .or_else(|| secret_assignment(line));
        if let Some(kind) = kind {
            found.push(Finding {
                path: path.to_owned(),
                line: i + 1,
                kind,
            });
        }
    }
    found
}

fn secret_assignment(line: &str) -> Option<&'static str> {
    let re = ASSIGNMENT.as_ref()?;
    re.captures_iter(line).find_map(|c| {
        let value = c.get(2)?.as_str();
        (value.len() >= 16 && entropy(value) >= 3.5 && !looks_like_a_reference(value))
            .then_some("a secret value assigned to a credential name")
    })
}

/// Values that name a secret rather than hold one: `${VAR}`, `os.environ[...]`, `<placeholder>`.
fn looks_like_a_reference(value: &str) -> bool {
    value.starts_with('$')
        || value.starts_with('<')
        || value.starts_with('{')
        || value.contains("environ")
        || value.contains("getenv")
        || value.contains('(')
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_credentials_by_shape_and_by_name() {
        let file = "import os\n\
                    token = 'hf_abcdefghijklmnopqrstuvwxyzABCDEFGH'\n\
                    AWS = 'AKIAABCDEFGHIJKLMNOP'\n\
                    -----BEGIN OPENSSH PRIVATE KEY-----\n\
                    API_KEY = \"q8Zr2LmX9vT4bN7kPw3s\"\n\
                    DB_PASSWORD: Zx81!kQmP0o9Lr2s\n";
        let found = scan("app.py", file.as_bytes());
        let lines: Vec<_> = found.iter().map(|f| (f.line, f.kind)).collect();
        assert_eq!(
            lines,
            vec![
                (2, "a Hugging Face token"),
                (3, "an AWS access key id"),
                (4, "a private key"),
                (5, "a secret value assigned to a credential name"),
                (6, "a secret value assigned to a credential name"),
            ]
        );
        for f in &found {
            let text = f.render();
            assert!(text.starts_with(&format!("app.py:{}: looks like", f.line)));
            assert!(!text.contains("hf_abc") && !text.contains("q8Zr2") && !text.contains("AKIA"));
        }
    }

    #[test]
    fn leaves_ordinary_code_and_references_alone() {
        let file = "API_KEY = os.environ['API_KEY']\n\
                    HF_TOKEN = \"${HF_TOKEN}\"\n\
                    MAX_KEY = 1000\n\
                    PASSWORD = 'aaaaaaaaaaaaaaaaaaaa'\n\
                    token_budget = 4096\n";
        assert_eq!(scan("app.py", file.as_bytes()), vec![]);
        assert_eq!(
            scan("model.bin", b"hf_abcdefghijklmnopqrstuvwxyzABCDEFGH\0"),
            vec![]
        );
    }
}
