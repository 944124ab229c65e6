//! Runs a sandbox on a fixed port with dev credentials, for load tests
//! (h2load) and manual poking with curl, until Ctrl-C; then prints the stats.
//!
//! ```text
//! cargo build --release -p push-dispatch-sandbox --example serve
//! taskset -c 0 target/release/examples/serve 127.0.0.1:8085 target/sandbox-creds 1 > serve.out &
//! JWT=$(grep '^jwt=' serve.out | cut -d= -f2)
//! echo -n '{"aps":{"alert":{"title":"hello","body":"world"}}}' > payload.json
//! taskset -c 1 h2load -n 400000 -c 4 -m 100 -t 1 -d payload.json \
//!   -H "authorization: bearer $JWT" -H "apns-topic: com.example.app" \
//!   -H "apns-push-type: alert" \
//!   http://127.0.0.1:8085/3/device/0123456789abcdef0123456789abcdef
//! ```
//! Arguments: listen address, credentials directory, tokio worker threads
//! (default 1, so that "one core" is measured; 0 = current-thread runtime).
//! It prints the base URL and a provider token valid for an hour.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use push_dispatch_sandbox::{Sandbox, SandboxConfig, devkeys};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8085").parse()?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/sandbox-creds".into()));
    let threads: usize = args.next().as_deref().unwrap_or("1").parse()?;
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let project = "local-project";
        let creds = devkeys::ensure(&dir, &format!("http://{listen}/token"), project)?;
        let mut config = SandboxConfig::local(
            creds.apns_config("com.example.app"),
            creds.fcm_config(project),
        );
        config.listen = listen;
        let sandbox = Sandbox::start(config).await?;
        let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        println!("base_url={}", sandbox.base_url());
        println!("jwt={}", creds.apns_provider_token(iat)?);
        tokio::signal::ctrl_c().await?;
        println!("stats={}", serde_json::to_string(&sandbox.stats())?);
        sandbox.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
