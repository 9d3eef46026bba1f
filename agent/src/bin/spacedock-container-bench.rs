//! `spacedock-container-bench`: how long a Space's container takes from create to its app answering HTTP, with
//! the image already unpacked (the agent's path: network namespace and veth, runtime spec, containerd
//! Containers/Create, Tasks/Create and Start, then HTTP probes every millisecond). Needs root and a containerd
//! socket (`ops/test.sh` starts one; so does `spacedock dev`). Prints each run and the median.
//!
//! `spacedock-container-bench --containerd-socket target/test-containerd/containerd.sock --runs 30`

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use spacedock_agent::allocs::answers_http;
use spacedock_agent::containerd::{Containerd, LAYER_TAR};
use spacedock_agent::network::{self, Subnet};
use spacedock_agent::spec;
use spacedock_shared::flavor::Catalog;

#[derive(Debug, Parser)]
#[command(name = "spacedock-container-bench", about)]
struct Args {
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    #[arg(long, default_value_t = 30)]
    runs: u32,
    /// Network for the containers' /30s.
    #[arg(long, default_value = "10.250.0.0/24")]
    subnet: String,
}

/// busybox-static as /bin/busybox and a page in /www.
fn layer() -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox: install busybox-static")?;
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind, mode, size| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h
    };
    for dir in ["bin/", "www/", "home/", "home/user/"] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            dir,
            std::io::empty(),
        )?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    let page = b"<h1>bench</h1>\n";
    let mut h = header(tar::EntryType::Regular, 0o644, page.len() as u64);
    b.append_data(&mut h, "www/index.html", page.as_slice())?;
    Ok(b.into_inner()?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let subnet = Subnet::parse(&args.subnet).map_err(anyhow::Error::msg)?;
    tokio::runtime::Runtime::new()?.block_on(run(args, subnet))
}

async fn run(args: Args, subnet: Subnet) -> anyhow::Result<()> {
    let c = Containerd::connect(&args.containerd_socket, "spacedock-bench").await?;
    let descriptor = c.write_blob(LAYER_TAR, &layer()?, HashMap::new()).await?;
    let chain = c.unpack(std::slice::from_ref(&descriptor)).await?;
    let dir = tempfile::tempdir()?;
    let flavor = Catalog::huggingface()
        .get("cpu-basic")
        .context("cpu-basic flavor")?
        .clone();
    let mut times = Vec::new();
    for i in 0..args.runs {
        let id = format!("bench-{}-{i}", std::process::id());
        let names = network::names(&id);
        let started = Instant::now();
        let address = network::create(&names, &subnet, i % subnet.slots())?;
        let allocation = spec::Allocation {
            id: id.clone(),
            space_id: "bench/hello".into(),
            title: "hello".into(),
            host: "bench-hello.localhost".into(),
            creator_user_id: String::new(),
            flavor: flavor.clone(),
            args: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
                .map(String::from)
                .to_vec(),
            cwd: "/".into(),
            image_env: vec!["PATH=/bin".into()],
            variables: vec![],
            secrets: vec![],
            netns_path: Some(network::netns_path(&names)),
        };
        let spec = serde_json::to_vec(&spec::build(&allocation)?)?;
        c.start(&id, &chain, spec, &dir.path().join(format!("{id}.log")))
            .await?;
        while !answers_http(address, 8080).await {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "the app did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        println!("run {i}: {:.1} ms", elapsed.as_secs_f64() * 1000.0);
        times.push(elapsed);
        let _ = c.kill(&id, 9).await;
        let _ = c.wait(&id).await;
        c.remove(&id).await;
        network::remove(&names);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "container create-and-start to HTTP answer over {} runs: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
    Ok(())
}
