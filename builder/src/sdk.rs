//! Gradio and Streamlit Spaces as a Dockerfile (no IO), built like a Docker Space's own: a Python base for
//! `python_version` (`spacedock/python:X`, made by `spacedock image bootstrap python`), a layer for
//! `packages.txt` (Debian packages), one for `pre-requirements.txt`, one for `requirements.txt` with the SDK
//! at `sdk_version`, then (from `APP_PART` on; the builder puts the `preload_from_hub` layers before it) the
//! app files under `/home/user/app` owned by uid 1000, and the command that starts the app on `app_port`. Each dependency layer copies only its own file, so changing app files rebuilds only
//! the app layer.

use spacedock_shared::space_config::{Sdk, SpaceConfig};

/// The line where a Space's own part starts (after the dependency layers); `preload_from_hub` layers go
/// before it.
pub const APP_PART: &str = "USER 1000:1000";

/// The base image name for a Python version.
pub fn python_base(version: &str) -> String {
    format!("spacedock/python:{version}")
}

/// The base to use for Python `wanted` when the store has no `python_base(wanted)`, among the `available`
/// image names: the same major version, the nearest newer minor first, else the nearest older one.
pub fn nearest_python_base(wanted: &str, available: &[String]) -> Option<String> {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (major, minor) = v.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    let (major, minor) = parse(wanted)?;
    let mut candidates: Vec<(u32, String)> = available
        .iter()
        .filter_map(|name| {
            let (m, n) = parse(name.strip_prefix("spacedock/python:")?)?;
            (m == major).then(|| (n, name.clone()))
        })
        .collect();
    candidates.sort();
    candidates
        .iter()
        .find(|(n, _)| *n >= minor)
        .or_else(|| candidates.last())
        .map(|(_, name)| name.clone())
}

/// The Dockerfile of a Gradio or Streamlit Space on `base`; `has` says whether the repo has a file.
pub fn dockerfile(config: &SpaceConfig, base: &str, has: impl Fn(&str) -> bool) -> String {
    let mut lines = vec![format!("FROM {base}"), "USER root".to_owned()];
    if has("packages.txt") {
        lines.push("COPY packages.txt /tmp/spacedock/packages.txt".into());
        lines.push(
            "RUN apt-get update && xargs -a /tmp/spacedock/packages.txt apt-get install -y --no-install-recommends \
             && rm -rf /var/lib/apt/lists/*"
                .into(),
        );
    }
    if has("pre-requirements.txt") {
        lines.push("COPY pre-requirements.txt /tmp/spacedock/pre-requirements.txt".into());
        lines.push("RUN pip install --no-cache-dir -r /tmp/spacedock/pre-requirements.txt".into());
    }
    let package = match config.sdk {
        Sdk::Streamlit => "streamlit",
        _ => "gradio",
    };
    let sdk = match &config.sdk_version {
        Some(version) => format!("{package}=={version}"),
        None => package.to_owned(),
    };
    if has("requirements.txt") {
        lines.push("COPY requirements.txt /tmp/spacedock/requirements.txt".into());
        lines.push(format!(
            "RUN pip install --no-cache-dir -r /tmp/spacedock/requirements.txt \"{sdk}\""
        ));
    } else {
        lines.push(format!("RUN pip install --no-cache-dir \"{sdk}\""));
    }
    let port = config.app_port;
    let app = config.effective_app_file().unwrap_or("app.py");
    lines.extend([
        APP_PART.to_owned(),
        "ENV HOME=/home/user PYTHONUNBUFFERED=1".to_owned(),
        "WORKDIR /home/user/app".to_owned(),
        "COPY --chown=1000:1000 . /home/user/app".to_owned(),
    ]);
    match config.sdk {
        Sdk::Streamlit => lines.extend([
            "ENV STREAMLIT_BROWSER_GATHER_USAGE_STATS=false".to_owned(),
            format!(
            "CMD [\"streamlit\", \"run\", \"{app}\", \"--server.port\", \"{port}\", \"--server.address\", \"0.0.0.0\", \
             \"--server.headless\", \"true\"]"
            ),
        ]),
        _ => {
            lines.push(format!(
                "ENV GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT={port} GRADIO_ANALYTICS_ENABLED=False"
            ));
            lines.push(format!("CMD [\"python\", \"{app}\"]"));
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacedock_shared::flavor::Catalog;
    use spacedock_shared::space_config::validate_readme;

    fn config(front: &str) -> SpaceConfig {
        let readme = format!("---\n{front}---\n");
        validate_readme(readme.as_bytes(), &Catalog::huggingface())
            .config
            .unwrap()
    }

    #[test]
    fn gradio_installs_its_requirements_and_the_sdk_then_copies_the_app() {
        let c = config(
            "sdk: gradio\nsdk_version: 4.44.1\npython_version: \"3.11\"\napp_file: main.py\n",
        );
        let text = dockerfile(&c, &python_base("3.11"), |p| p == "requirements.txt");
        let parsed = crate::dockerfile::parse(&text).unwrap();
        assert_eq!(parsed.stages[0].from, "spacedock/python:3.11");
        assert!(
            text.contains("-r /tmp/spacedock/requirements.txt \"gradio==4.44.1\""),
            "{text}"
        );
        assert!(!text.contains("packages.txt"));
        assert!(text.contains("GRADIO_SERVER_PORT=7860"));
        assert!(text.ends_with("CMD [\"python\", \"main.py\"]\n"), "{text}");
        // The app files come last, so changing them leaves the dependency layers cached.
        let copy_app = text.find("COPY --chown=1000:1000 .").unwrap();
        assert!(text.rfind("RUN ").unwrap() < copy_app);
    }

    #[test]
    fn a_missing_python_base_falls_back_to_the_nearest_newer_one() {
        let names: Vec<String> = [
            "busybox:latest",
            "spacedock/python:3.9",
            "spacedock/python:3.11",
            "spacedock/python:3.13",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            nearest_python_base("3.10", &names).as_deref(),
            Some("spacedock/python:3.11")
        );
        assert_eq!(
            nearest_python_base("3.12", &names).as_deref(),
            Some("spacedock/python:3.13")
        );
        assert_eq!(
            nearest_python_base("3.14", &names).as_deref(),
            Some("spacedock/python:3.13")
        );
        assert_eq!(nearest_python_base("2.7", &names), None);
        assert_eq!(nearest_python_base("3.10", &names[..1]), None);
    }

    #[test]
    fn streamlit_runs_on_its_port_with_debian_packages_first() {
        let c = config("sdk: streamlit\n");
        let text = dockerfile(&c, "b", |p| {
            p == "packages.txt" || p == "pre-requirements.txt"
        });
        crate::dockerfile::parse(&text).unwrap();
        let apt = text.find("apt-get install").unwrap();
        let pre = text.find("pre-requirements.txt").unwrap();
        assert!(apt < pre);
        assert!(text.contains("RUN pip install --no-cache-dir \"streamlit\""));
        assert!(text.contains("\"--server.port\", \"8501\""), "{text}");
    }
}
