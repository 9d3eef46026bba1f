//! The wire protocol over real QUIC streams (quinn on loopback): handshake, messages both ways, hostile frames.

#![allow(clippy::unwrap_used)] // test setup: panics are how tests fail

use std::sync::Arc;
use std::time::Duration;

use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spacedock_net::{FramedReader, NetError, accept_handshake, dial_handshake, send};
use spacedock_shared::wire::{
    self, DEFAULT_MAX_FRAME_BYTES, Heartbeat, HeartbeatAck, Hello, Message, PROTOCOL_VERSION,
    RefuseCode, Role,
};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Pair {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

fn endpoints() -> Pair {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).unwrap();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
    );
    Pair { server, client }
}

async fn connect(pair: &Pair) -> (quinn::Connection, quinn::Connection) {
    let addr = pair.server.local_addr().unwrap();
    let dial = async {
        pair.client
            .connect(addr, "localhost")
            .unwrap()
            .await
            .unwrap()
    };
    let accept = async { pair.server.accept().await.unwrap().await.unwrap() };
    tokio::join!(dial, accept)
}

#[tokio::test]
async fn handshake_then_heartbeats_over_quic() {
    let pair = endpoints();
    let (client_conn, server_conn) = connect(&pair).await;
    let server = tokio::spawn(async move {
        let (mut tx, rx) = server_conn.accept_bi().await.unwrap();
        let mut rx = FramedReader::new(rx, DEFAULT_MAX_FRAME_BYTES);
        let (hello, version) = accept_handshake(&mut rx, &mut tx, "test-coordinator", TIMEOUT)
            .await
            .unwrap();
        assert_eq!(hello.role, Role::Agent);
        assert_eq!(version, PROTOCOL_VERSION);
        let mut n = 0;
        while let Some(message) = rx.recv().await.unwrap() {
            let Message::Heartbeat(Heartbeat { seq }) = message else {
                panic!("unexpected {message:?}")
            };
            send(&mut tx, &HeartbeatAck { seq }.into()).await.unwrap();
            n += 1;
        }
        tx.finish().unwrap();
        tx.stopped().await.unwrap();
        n
    });
    let (mut tx, rx) = client_conn.open_bi().await.unwrap();
    let mut rx = FramedReader::new(rx, DEFAULT_MAX_FRAME_BYTES);
    let welcome = dial_handshake(
        &mut rx,
        &mut tx,
        Role::Agent,
        "test-agent",
        "node-1",
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(welcome.version, PROTOCOL_VERSION);
    assert_eq!(welcome.software, "test-coordinator");
    for seq in 0..100 {
        send(&mut tx, &Heartbeat { seq }.into()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(HeartbeatAck { seq }.into()));
    }
    tx.finish().unwrap();
    assert_eq!(rx.recv().await.unwrap(), None);
    assert_eq!(server.await.unwrap(), 100);
}

#[tokio::test]
async fn version_mismatch_is_refused_with_a_reason() {
    let pair = endpoints();
    let (client_conn, server_conn) = connect(&pair).await;
    let server = tokio::spawn(async move {
        let (mut tx, rx) = server_conn.accept_bi().await.unwrap();
        let mut rx = FramedReader::new(rx, DEFAULT_MAX_FRAME_BYTES);
        let result = accept_handshake(&mut rx, &mut tx, "test-coordinator", TIMEOUT).await;
        tx.finish().unwrap();
        let _ = tx.stopped().await;
        result
    });
    let (mut tx, rx) = client_conn.open_bi().await.unwrap();
    let mut rx = FramedReader::new(rx, DEFAULT_MAX_FRAME_BYTES);
    let future = Hello {
        min_version: 90,
        max_version: 99,
        role: Role::Builder,
        software: "x".into(),
        name: "b".into(),
    };
    send(&mut tx, &future.into()).await.unwrap();
    let Some(Message::Refused(refused)) = rx.recv().await.unwrap() else {
        panic!("expected Refused")
    };
    assert_eq!(refused.code, RefuseCode::VersionMismatch);
    assert!(refused.message.contains("90..=99"), "{}", refused.message);
    assert!(matches!(
        server.await.unwrap(),
        Err(NetError::Refused {
            code: RefuseCode::VersionMismatch,
            ..
        })
    ));
}

#[tokio::test]
async fn oversized_and_unknown_frames_are_refused_not_crashed() {
    let pair = endpoints();
    let (client_conn, server_conn) = connect(&pair).await;
    let server = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (mut tx, rx) = server_conn.accept_bi().await.unwrap();
            let mut rx = FramedReader::new(rx, 4096);
            results.push(
                accept_handshake(&mut rx, &mut tx, "t", TIMEOUT)
                    .await
                    .map(|_| ()),
            );
            tx.finish().unwrap();
            let _ = tx.stopped().await;
        }
        results
    });
    // A frame announcing 1 GiB: refused from its header, before any of it is buffered.
    {
        let (mut tx, rx) = client_conn.open_bi().await.unwrap();
        tx.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        tx.write_all(&[0; 64]).await.unwrap();
        let mut rx = FramedReader::new(rx, DEFAULT_MAX_FRAME_BYTES);
        let Some(Message::Refused(r)) = rx.recv().await.unwrap() else {
            panic!("expected Refused")
        };
        assert!(
            r.message.contains("exceeds the limit of 4096"),
            "{}",
            r.message
        );
    }
    // A kind from the future.
    {
        let (mut tx, rx) = client_conn.open_bi().await.unwrap();
        let mut frame = wire::encode(&Heartbeat { seq: 1 }.into()).unwrap();
        frame[4..6].copy_from_slice(&4242u16.to_be_bytes());
        tx.write_all(&frame).await.unwrap();
        let mut rx = FramedReader::new(rx, DEFAULT_MAX_FRAME_BYTES);
        let Some(Message::Refused(r)) = rx.recv().await.unwrap() else {
            panic!("expected Refused")
        };
        assert_eq!(r.message, "unknown message kind 4242");
    }
    let results = server.await.unwrap();
    assert!(
        matches!(
            results[0],
            Err(NetError::Wire(wire::WireError::FrameTooLarge { .. }))
        ),
        "{results:?}"
    );
    assert!(
        matches!(
            results[1],
            Err(NetError::Wire(wire::WireError::UnknownKind { kind: 4242 }))
        ),
        "{results:?}"
    );
}

#[tokio::test]
async fn silent_peer_times_out() {
    let (client_side, server_side) = tokio::io::duplex(1024);
    let (server_rx, mut server_tx) = tokio::io::split(server_side);
    let mut rx = FramedReader::new(server_rx, 1024);
    let err = accept_handshake(&mut rx, &mut server_tx, "t", Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::TimedOut(_)), "{err}");
    drop(client_side);
}
