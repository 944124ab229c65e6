//! Test fixture: a sandbox on 127.0.0.1:0 with fresh dev credentials, an h2c
//! client, and helpers that build real ES256 provider tokens and RS256 OAuth
//! assertions.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use push_dispatch_sandbox::devkeys::{self, DevCredentials};
use push_dispatch_sandbox::{Sandbox, SandboxConfig};
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

pub const TOPIC: &str = "com.example.app";
pub const PROJECT: &str = "local-project";
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client speaking HTTP/2 with prior knowledge (h2c), one connection.
pub fn h2c() -> Client {
    Client::builder().http2_prior_knowledge().build().unwrap()
}

pub struct Fixture {
    pub sandbox: Sandbox,
    pub creds: DevCredentials,
    pub client: Client,
    jwt: std::sync::OnceLock<String>,
    /// Keeps the credentials alive as long as the fixture.
    pub _dir: tempfile::TempDir,
}

/// One APNs or FCM answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
    pub fn fcm_code(&self) -> &str {
        self.body["error"]["details"][0]["errorCode"]
            .as_str()
            .unwrap_or("")
    }
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn start() -> Fixture {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut SandboxConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // The port is not known yet: any URL of the sandbox's own /token is accepted as `aud`.
    let creds = devkeys::ensure(dir.path(), "http://127.0.0.1:1/token", PROJECT).unwrap();
    let mut config = SandboxConfig::local(creds.apns_config(TOPIC), creds.fcm_config(PROJECT));
    adjust(&mut config);
    let sandbox = Sandbox::start(config).await.unwrap();
    // Point the service account at the running sandbox, as `make run` does.
    let creds = devkeys::ensure(
        dir.path(),
        &format!("{}/token", sandbox.base_url()),
        PROJECT,
    )
    .unwrap();
    Fixture {
        sandbox,
        creds,
        client: h2c(),
        jwt: std::sync::OnceLock::new(),
        _dir: dir,
    }
}

impl Fixture {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    /// The fixture's provider token, issued at its first use (ES256 signatures
    /// are randomized: every fresh signature is a new token generation).
    pub fn jwt(&self) -> String {
        self.jwt.get_or_init(|| self.jwt_at(now())).clone()
    }

    pub fn jwt_at(&self, iat: i64) -> String {
        self.creds.apns_provider_token(iat).unwrap()
    }

    /// A valid alert push to `token` with `jwt`.
    pub fn apns_request(&self, client: &Client, token: &str, jwt: &str) -> reqwest::RequestBuilder {
        client
            .post(self.url(&format!("/3/device/{token}")))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", TOPIC)
            .header("apns-push-type", "alert")
            .body(r#"{"aps":{"alert":{"title":"hi","body":"there"}}}"#)
    }

    pub async fn push(&self, token: &str) -> Answer {
        let jwt = self.jwt();
        answer(
            self.apns_request(&self.client, token, &jwt)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// An RS256 JWT-bearer assertion from the dev service account, with `claims` merged in.
    pub fn assertion(&self, overrides: Value) -> String {
        let sa: Value =
            serde_json::from_slice(&std::fs::read(&self.creds.service_account_file).unwrap())
                .unwrap();
        let key = sa["private_key"].as_str().unwrap();
        let mut claims = json!({
            "iss": sa["client_email"],
            "aud": sa["token_uri"],
            "scope": FCM_SCOPE,
            "iat": now(),
            "exp": now() + 3595,
            "sub": null,
        });
        for (k, v) in overrides.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign_rs256(key, &claims, true)
    }

    /// Exchanges an assertion at `/token`.
    pub async fn token_request(&self, assertion: &str) -> Answer {
        let body = serde_urlencoded::to_string([
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .unwrap();
        answer(
            self.client
                .post(self.url("/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A valid FCM access token.
    pub async fn access_token(&self) -> String {
        let a = self.token_request(&self.assertion(json!({}))).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn fcm_send(&self, project: &str, bearer: Option<&str>, body: Value) -> Answer {
        let mut req = self
            .client
            .post(self.url(&format!("/v1/projects/{project}/messages:send")))
            .json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        answer(req.send().await.unwrap()).await
    }
}

/// Signs `claims` with RS256 using a PKCS#8 PEM RSA key; `padded` mimics gcp_auth.
pub fn sign_rs256(pem: &str, claims: &Value, padded: bool) -> String {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let engine = if padded {
        base64::engine::general_purpose::URL_SAFE
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    };
    let mut jwt = engine.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    jwt.push('.');
    jwt.push_str(&engine.encode(claims.to_string()));
    let mut sig = vec![0; pair.public_modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        jwt.as_bytes(),
        &mut sig,
    )
    .unwrap();
    jwt.push('.');
    jwt.push_str(&engine.encode(&sig));
    jwt
}
