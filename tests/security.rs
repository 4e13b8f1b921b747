//! `--auth-token` (bearer tokens on mutating calls, and on reads with
//! `--auth-reads`) and TLS (`--tls-cert`/`--tls-key`), from a Rust client
//! and from the real grpcurl against the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Binary, TestServer, create, delete, delete_group, delete_watch, get_record, ingest, key_of, put,
    put_group, record,
};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, trade_service_client::TradeServiceClient,
};
use tradewatch::{AuthToken, Config, TlsFiles};

const TOKEN: &str = "tw-test-0123456789abcdef";

/// Puts `authorization: VALUE` on every call (nothing when `None`).
#[derive(Clone)]
struct Authorization(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Authorizing = InterceptedService<Channel, Authorization>;

fn authorizing(channel: Channel, value: Option<&str>) -> Authorizing {
    InterceptedService::new(channel, Authorization(value.map(|v| v.parse().unwrap())))
}

fn trade(channel: &Channel, value: Option<&str>) -> TradeServiceClient<Authorizing> {
    TradeServiceClient::new(authorizing(channel.clone(), value))
}

fn milestones(channel: &Channel, value: Option<&str>) -> MilestoneServiceClient<Authorizing> {
    MilestoneServiceClient::new(authorizing(channel.clone(), value))
}

async fn start(dir: &Path, auth_reads: bool) -> TestServer {
    TestServer::start_with(Config {
        auth_token: Some(AuthToken::new(TOKEN).unwrap()),
        auth_reads,
        ..Config::new(dir)
    })
    .await
}

fn kaz_2025() -> pb::TradeRecord {
    record("CHN", "KAZ", "2025", 48_000_000_000, "GACC")
}

fn watch() -> pb::Watch {
    pb::Watch {
        name: "China–Central Asia trade".into(),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["CENTRAL_ASIA".into()],
            ..Default::default()
        }),
        record_high: true,
        ..Default::default()
    }
}

fn group() -> pb::PartnerGroup {
    pb::PartnerGroup {
        name: "TEST_GROUP".into(),
        members: vec!["KAZ".into(), "UZB".into()],
        ..Default::default()
    }
}

fn assert_unauthenticated(result: Result<impl std::fmt::Debug, Status>, what: &str, says: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert!(
        status.message().contains(says),
        "{what}: {:?} should say {says:?}",
        status.message()
    );
}

/// Every mutating RPC, called with `authorization: value`; each result's
/// status code (OK as `None`).
async fn every_write(channel: &Channel, value: Option<&str>) -> Vec<(&'static str, Option<(Code, String)>)> {
    let mut t = trade(channel, value);
    let mut m = milestones(channel, value);
    let code = |r: Result<(), Status>| r.err().map(|s| (s.code(), s.message().to_owned()));
    vec![
        (
            "PutRecords",
            code(t.put_records(put(vec![kaz_2025()])).await.map(drop)),
        ),
        (
            "IngestRecords",
            code(
                t.ingest_records(tokio_stream::iter(vec![ingest(vec![record(
                    "CHN", "UZB", "2025", 1, "x",
                )])]))
                .await
                .map(drop),
            ),
        ),
        (
            "DeleteRecord",
            code(t.delete_record(delete(key_of(&kaz_2025()))).await.map(drop)),
        ),
        ("PutGroup", code(t.put_group(put_group(group())).await.map(drop))),
        (
            "DeleteGroup",
            code(t.delete_group(delete_group("TEST_GROUP")).await.map(drop)),
        ),
        (
            "CreateWatch",
            code(
                m.create_watch(create(pb::Watch {
                    id: "w-auth".into(),
                    ..watch()
                }))
                .await
                .map(drop),
            ),
        ),
        (
            "DeleteWatch",
            code(m.delete_watch(delete_watch("w-auth")).await.map(drop)),
        ),
    ]
}

#[tokio::test]
async fn writes_need_the_token_and_reads_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), false).await;
    let channel = server.channel().await;

    // No header, a wrong token, a token of another length, another scheme:
    // every mutating RPC is refused, before anything is checked or stored.
    for (value, says) in [
        (None, "needs the header `authorization: Bearer <token>`"),
        (
            Some("Bearer tw-test-0123456789abcdeX"),
            "bearer token is not valid",
        ),
        (Some("Bearer short"), "bearer token is not valid"),
        (Some(&*format!("Basic {TOKEN}")), "must be `Bearer <token>`"),
        (Some(TOKEN), "must be `Bearer <token>`"),
    ] {
        for (rpc, outcome) in every_write(&channel, value).await {
            let (code, message) = outcome.unwrap_or_else(|| panic!("{rpc} with {value:?} was accepted"));
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {value:?}: {message}");
            assert!(
                message.contains(says),
                "{rpc} with {value:?}: {message:?} should say {says:?}"
            );
        }
    }
    let mut open = trade(&channel, None);
    let status = get_record(&mut open, key_of(&kaz_2025())).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "a refused write stored nothing");
    assert_unauthenticated(
        open.put_records(put(vec![kaz_2025()])).await,
        "PutRecords without a token",
        "PutRecords needs",
    );

    // With the token each of them goes through (in order: the delete finds
    // what the put stored, and so on).
    let bearer = format!("Bearer {TOKEN}");
    for (rpc, outcome) in every_write(&channel, Some(&bearer)).await {
        assert_eq!(outcome, None, "{rpc} with the right token");
    }
    // The scheme is case-insensitive.
    let mut lower = trade(&channel, Some(&format!("bearer {TOKEN}")));
    let created = lower
        .put_records(put(vec![kaz_2025()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.results[0].outcome(), pb::WriteOutcome::Created);

    // Reads need nothing.
    let got = get_record(&mut open, key_of(&kaz_2025())).await.unwrap();
    assert_eq!(got.value.unwrap().units, 48_000_000_000);
    let listed = open
        .list_records(pb::ListRecordsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        listed.into_inner().records.len(),
        2,
        "the put and the ingested record"
    );
    open.aggregate(pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    open.get_group(pb::GetGroupRequest {
        name: "CENTRAL_ASIA".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    open.list_groups(pb::ListGroupsRequest::default()).await.unwrap();
    let mut m = milestones(&channel, None);
    m.list_watches(pb::ListWatchesRequest::default()).await.unwrap();
    let events = m
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!events.events.is_empty());
    let mut stream = m
        .subscribe(pb::SubscribeRequest {
            from_sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let status = m
        .get_watch(pb::GetWatchRequest {
            id: "w-none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Health checking needs nothing either.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tradewatch.v1.TradeService".into(),
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn with_auth_reads_reads_need_the_token_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), true).await;
    let channel = server.channel().await;
    let bearer = format!("Bearer {TOKEN}");

    let mut open = trade(&channel, None);
    assert_unauthenticated(
        get_record(&mut open, key_of(&kaz_2025())).await,
        "GetRecord without a token",
        "GetRecord needs the header",
    );
    assert_unauthenticated(
        open.list_records(pb::ListRecordsRequest::default()).await,
        "ListRecords without a token",
        "ListRecords needs",
    );
    assert_unauthenticated(
        trade(&channel, Some("Bearer nope"))
            .list_groups(pb::ListGroupsRequest::default())
            .await,
        "ListGroups with a wrong token",
        "not valid",
    );
    let mut m = milestones(&channel, None);
    assert_unauthenticated(
        m.subscribe(pb::SubscribeRequest::default()).await,
        "Subscribe without a token",
        "Subscribe needs",
    );
    assert_unauthenticated(
        m.list_events(pb::ListEventsRequest::default()).await,
        "ListEvents without a token",
        "ListEvents needs",
    );

    let mut authed = trade(&channel, Some(&bearer));
    authed.put_records(put(vec![kaz_2025()])).await.unwrap();
    get_record(&mut authed, key_of(&kaz_2025())).await.unwrap();
    let mut stream = milestones(&channel, Some(&bearer))
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);

    // Health checking stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    server.stop().await;
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1,
/// written as PEM files into `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_pem: String,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("tradewatch test CA {name}"));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();

    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
        ca_pem: ca.pem(),
    };
    std::fs::write(&pki.ca, &pki.ca_pem).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

async fn tls_channel(addr: std::net::SocketAddr, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// A server with TLS (the certificate of `pki`) and the token, its store
/// in `dir`.
async fn start_tls(dir: &Path, pki: &Pki) -> TestServer {
    TestServer::start_with(Config {
        tls: Some(TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        }),
        auth_token: Some(AuthToken::new(TOKEN).unwrap()),
        ..Config::new(dir.join("data"))
    })
    .await
}

#[tokio::test]
async fn tls_with_a_ca_signed_certificate_from_a_rust_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "server");
    let mut server = start_tls(dir.path(), &pki).await;

    let channel = tls_channel(server.addr, &pki.ca_pem).await.expect("TLS connects");
    let mut open = trade(&channel, None);
    assert_unauthenticated(
        open.put_records(put(vec![kaz_2025()])).await,
        "PutRecords over TLS without a token",
        "needs the header",
    );
    let mut authed = trade(&channel, Some(&format!("Bearer {TOKEN}")));
    let created = authed
        .put_records(put(vec![kaz_2025()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.results[0].outcome(), pb::WriteOutcome::Created);
    let got = get_record(&mut open, key_of(&kaz_2025())).await.unwrap();
    assert_eq!(got.value.unwrap().units, 48_000_000_000);

    // A client that does not trust the CA cannot connect, nor can a
    // plaintext one call.
    let other = make_pki(dir.path(), "other");
    let untrusted = match tls_channel(server.addr, &other.ca_pem).await {
        Err(_) => true,
        Ok(channel) => get_record(&mut trade(&channel, None), key_of(&kaz_2025()))
            .await
            .is_err(),
    };
    assert!(untrusted, "a client trusting another CA got through");
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(plain) = plain {
        let result = get_record(&mut trade(&plain, None), key_of(&kaz_2025())).await;
        assert!(result.is_err(), "a plaintext call to a TLS server succeeded");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_bad_tls_setup_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "server");
    let other = make_pki(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let build = |cert: &Path, key: &Path| {
        let config = Config {
            tls: Some(TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }),
            ..Config::new(dir.path().join("data"))
        };
        async move {
            match tradewatch::Application::build("127.0.0.1:0".parse().unwrap(), config).await {
                Ok(_) => panic!("a bad TLS setup was accepted"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let message = build(&missing, &pki.key).await;
    assert!(
        message.contains("cannot read TLS certificate") && message.contains("missing.pem"),
        "{message}"
    );
    let message = build(&pki.cert, &missing).await;
    assert!(
        message.contains("cannot read TLS private key") && message.contains("missing.pem"),
        "{message}"
    );
    let message = build(&garbage, &pki.key).await;
    assert!(
        message.contains("garbage.pem") && message.contains("no PEM certificate"),
        "{message}"
    );
    let message = build(&pki.cert, &garbage).await;
    assert!(
        message.contains("garbage.pem") && message.contains("no PEM private key"),
        "{message}"
    );
    let message = build(&pki.cert, &other.key).await;
    assert!(
        message.contains("server-cert.pem") && message.contains("other-key.pem"),
        "{message}"
    );
    // Nothing was opened: the data dir was never created.
    assert!(!dir.path().join("data").exists());

    // The binary says so too, and wants both flags or neither.
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tradewatch"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env_remove("TRADEWATCH_TLS_CERT")
            .env_remove("TRADEWATCH_TLS_KEY")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cert = pki.cert.to_str().unwrap();
    let stderr = run(&["--tls-cert", cert]);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let stderr = run(&["--tls-key", pki.key.to_str().unwrap()]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let stderr = run(&["--tls-cert", cert, "--tls-key", garbage.to_str().unwrap()]);
    assert!(stderr.contains("no PEM private key"), "{stderr}");
    let stderr = run(&["--auth-reads"]);
    assert!(stderr.contains("--auth-reads needs --auth-token"), "{stderr}");
}

/// The token can come from the environment (and then is not on the command
/// line for `ps` to show).
#[tokio::test]
async fn the_binary_takes_the_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tradewatch"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TRADEWATCH_AUTH_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("tradewatch listening on ")
        .unwrap()
        .to_owned();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let result = trade(&channel, None).put_records(put(vec![kaz_2025()])).await;
    let accepted = trade(&channel, Some(&format!("Bearer {TOKEN}")))
        .put_records(put(vec![kaz_2025()]))
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_unauthenticated(result, "PutRecords without a token", "needs the header");
    accepted.unwrap();
}

/// grpcurl, as people use it: `-cacert` to trust the server's CA and `-H`
/// for the token, against the real binary.
#[tokio::test]
async fn tls_and_token_with_grpcurl_and_cacert() {
    let Some(grpcurl) = which("grpcurl") else {
        eprintln!("skipping: grpcurl is not on PATH (scripts/smoke.sh runs the same check with it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "server");
    let server = Binary::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
            "--auth-token",
            TOKEN,
        ],
    );
    let call = |args: &[&str]| {
        let output = Command::new(&grpcurl)
            .args(["-connect-timeout", "5", "-max-time", "15", "-cacert"])
            .arg(&pki.ca)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    let record = r#"{"records":[{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2025",
        "commodity":"TOTAL","value":{"currency_code":"USD","units":"48000000000"},"source":"GACC"}]}"#;
    let key = r#"{"key":{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2025","commodity":"TOTAL","currency":"USD"}}"#;
    let put_rpc = "tradewatch.v1.TradeService/PutRecords";
    let bearer = format!("authorization: Bearer {TOKEN}");

    // Reflection works over TLS without a token.
    let (ok, out) = call(&[&server.addr, "list"]);
    assert!(ok && out.contains("tradewatch.v1.TradeService"), "{out}");

    let (ok, out) = call(&["-d", record, &server.addr, put_rpc]);
    assert!(!ok && out.contains("Code: Unauthenticated"), "{out}");
    assert!(out.contains("authorization: Bearer <token>"), "{out}");
    let (ok, out) = call(&[
        "-H",
        "authorization: Bearer wrong",
        "-d",
        record,
        &server.addr,
        put_rpc,
    ]);
    assert!(!ok && out.contains("Code: Unauthenticated"), "{out}");

    let (ok, out) = call(&["-H", &bearer, "-d", record, &server.addr, put_rpc]);
    assert!(ok && out.contains("WRITE_OUTCOME_CREATED"), "{out}");
    let (ok, out) = call(&["-d", key, &server.addr, "tradewatch.v1.TradeService/GetRecord"]);
    assert!(ok && out.contains("48000000000"), "{out}");

    // Without -cacert the server's certificate is not trusted.
    let output = Command::new(&grpcurl)
        .args(["-connect-timeout", "5", "-max-time", "15", &server.addr, "list"])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "grpcurl trusted the test CA without -cacert"
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn import_reaches_a_server_with_tls_and_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "server");
    let mut server = start_tls(dir.path(), &pki).await;
    let data = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/china_central_asia.csv"
    ));
    let remote = tradewatch::import::Remote {
        addr: format!("localhost:{}", server.addr.port()),
        auth_token: None,
        tls_ca: Some(pki.ca.clone()),
    };

    let refused = tradewatch::import::import_to_server(&remote, data, false)
        .await
        .expect_err("no token");
    assert!(
        refused.to_string().contains("Unauthenticated") || refused.to_string().contains("authorization"),
        "{refused:#}"
    );
    let with_token = tradewatch::import::Remote {
        auth_token: Some(TOKEN.to_owned()),
        ..remote
    };
    let summary = tradewatch::import::import_to_server(&with_token, data, false)
        .await
        .expect("imports over TLS with the token");
    assert_eq!(summary.created, 16);
    assert_eq!(summary.unchanged, 0);

    let channel = tls_channel(server.addr, &pki.ca_pem).await.unwrap();
    let got = get_record(&mut trade(&channel, None), key_of(&common::seed_records()[0]))
        .await
        .expect("stored");
    assert_eq!(got.value, common::seed_records()[0].value);
    server.stop().await;
}
