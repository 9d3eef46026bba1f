//! Gradio and Streamlit Spaces as a Dockerfile (no IO), built like a Docker Space's own: a Python base for
//! `python_version` (`spacedock/python:X`, made by `spacedock image bootstrap python`), a layer for
//! `packages.txt` (Debian packages), one for `pre-requirements.txt`, one for `requirements.txt` with the SDK
//! at `sdk_version`, then the app files under `/home/user/app` owned by uid 1000, and the command that starts
//! the app on `app_port`. Each dependency layer copies only its own file, so changing app files rebuilds only
//! the app layer.

use spacedock_shared::space_config::{Sdk, SpaceConfig};

/// The base image name for a Python version.
pub fn python_base(version: &str) -> String {
    format!("spacedock/python:{version}")
}

/// The Dockerfile of a Gradio or Streamlit Space; `has` says whether the repo has a file.
pub fn dockerfile(config: &SpaceConfig, has: impl Fn(&str) -> bool) -> String {
    let mut lines = vec![
        format!("FROM {}", python_base(&config.python_version)),
        "USER root".to_owned(),
    ];
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
        "USER 1000:1000".to_owned(),
        "ENV HOME=/home/user PYTHONUNBUFFERED=1".to_owned(),
        "WORKDIR /home/user/app".to_owned(),
        "COPY --chown=1000:1000 . /home/user/app".to_owned(),
    ]);
    match config.sdk {
        Sdk::Streamlit => lines.push(format!(
            "CMD [\"streamlit\", \"run\", \"{app}\", \"--server.port\", \"{port}\", \"--server.address\", \"0.0.0.0\", \
             \"--server.headless\", \"true\"]"
        )),
        _ => {
            lines.push(format!(
                "ENV GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT={port}"
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
        let text = dockerfile(&c, |p| p == "requirements.txt");
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
    fn streamlit_runs_on_its_port_with_debian_packages_first() {
        let c = config("sdk: streamlit\n");
        let text = dockerfile(&c, |p| p == "packages.txt" || p == "pre-requirements.txt");
        crate::dockerfile::parse(&text).unwrap();
        let apt = text.find("apt-get install").unwrap();
        let pre = text.find("pre-requirements.txt").unwrap();
        assert!(apt < pre);
        assert!(text.contains("RUN pip install --no-cache-dir \"streamlit\""));
        assert!(text.contains("\"--server.port\", \"8501\""), "{text}");
    }
}
