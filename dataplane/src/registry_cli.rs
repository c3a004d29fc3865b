//! `cmq registry`: writes DeviceCredentials, TopicAcls and ForwardRules into a cluster's NATS KV buckets in
//! the shared encoding, as the operator does: a way to run a cluster without Kubernetes,
//! and the tests' stand-in for the operator. Secret references are resolved from the
//! Secrets in the same input and hashed with argon2id; plaintext never reaches NATS.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use cmq_crds::{kv, seal};

use crate::manifests::{self, ManifestError};
use crate::state::nats::registry::open_buckets;

/// Flags of `cmq registry`.
#[derive(Args, Debug)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Subcommand, Debug)]
enum RegistryCommand {
    /// Validates and writes every DeviceCredential, TopicAcl and ForwardRule of a file or
    /// folder.
    Apply {
        #[command(flatten)]
        target: Target,
        /// A YAML file or a folder of them.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// The cluster's secret (the hubs' `--coap-token-secret`): DeviceCredentials'
        /// pre-shared keys are sealed with it, so only hubs can read them.
        #[arg(long, env = "CMQ_COAP_TOKEN_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
    /// Removes one resource.
    Delete {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum Kind {
    #[value(name = "DeviceCredential")]
    DeviceCredential,
    #[value(name = "TopicAcl")]
    TopicAcl,
    #[value(name = "ForwardRule")]
    ForwardRule,
}

#[derive(Args, Debug)]
struct Target {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "CMQ_NATS_URL")]
    nats: String,
    /// Cluster name (as given to `cmq hub --cluster`).
    #[arg(long, env = "CMQ_CLUSTER")]
    cluster: String,
    /// Replicas of the buckets, when this command creates them.
    #[arg(long, env = "CMQ_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
}

impl Target {
    /// The credential, ACL and rule buckets.
    async fn buckets(&self) -> anyhow::Result<[async_nats::jetstream::kv::Store; 3]> {
        let servers: Vec<async_nats::ServerAddr> = self
            .nats
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("invalid NATS URL")?;
        let client = async_nats::connect(servers)
            .await
            .context("cannot connect to NATS")?;
        let js = async_nats::jetstream::new(client);
        let replicas = self.stream_replicas.max(1);
        let (credentials, acls) = open_buckets(&js, &self.cluster, replicas).await?;
        let rules = crate::dispatch::rules_watch::open(&js, &self.cluster, replicas)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok([credentials, acls, rules])
    }
}

/// Runs `cmq registry ...`.
pub async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    match args.command {
        RegistryCommand::Apply {
            target,
            file,
            cluster_secret,
        } => apply(&target, &file, cluster_secret.as_deref().unwrap_or("")).await,
        RegistryCommand::Delete {
            target,
            kind,
            name,
            namespace,
        } => {
            let [credentials, acls, rules] = target.buckets().await?;
            let store = match kind {
                Kind::DeviceCredential => credentials,
                Kind::TopicAcl => acls,
                Kind::ForwardRule => rules,
            };
            store
                .delete(kv::entry_key(&namespace, &name))
                .await
                .context("cannot delete the entry")?;
            println!("deleted {kind:?} {namespace}/{name}");
            Ok(())
        }
    }
}

async fn apply(
    target: &Target,
    file: &std::path::Path,
    cluster_secret: &str,
) -> anyhow::Result<()> {
    let m = manifests::load(file)?;
    // Everything is validated (and hashed) before anything is written.
    manifests::access_inputs(&m)?;
    let mut entries = Vec::new();
    for l in &m.credentials {
        let c = &l.resource;
        let ns = c
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = c.metadata.name.clone().unwrap_or_default();
        let field_err = |source| ManifestError::Field {
            path: l.path.clone(),
            kind: "DeviceCredential",
            name: name.clone(),
            source,
        };
        let hash = match c.spec.password.as_ref().and_then(|p| p.secret_ref.as_ref()) {
            Some(r) => {
                let plain =
                    manifests::secret_value(&m, &ns, &r.name, &r.key, "spec.password.secretRef")
                        .map_err(field_err)?;
                Some(kv::hash_password(&plain)?)
            }
            None => None,
        };
        let sealed = match &c.spec.psk {
            Some(p) => {
                let key = manifests::secret_value(
                    &m,
                    &ns,
                    &p.secret_ref.name,
                    &p.secret_ref.key,
                    manifests::PSK_FIELD,
                )
                .map_err(field_err)?;
                let entry = kv::entry_key(&ns, &name);
                Some(
                    seal::seal(cluster_secret.as_bytes(), &entry, &p.identity, &key)
                        .with_context(|| format!("DeviceCredential {entry}: spec.psk"))?,
                )
            }
            None => None,
        };
        let bytes = kv::encode_credential(c, hash.as_deref(), sealed.as_deref())?;
        entries.push((Kind::DeviceCredential, kv::entry_key(&ns, &name), bytes));
    }
    for l in &m.acls {
        let a = &l.resource;
        let ns = a
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = a.metadata.name.clone().unwrap_or_default();
        entries.push((
            Kind::TopicAcl,
            kv::entry_key(&ns, &name),
            kv::encode_acl(a)?,
        ));
    }
    for l in &m.rules {
        let r = &l.resource;
        let ns = manifests::namespace(&r.metadata);
        let name = manifests::name(&r.metadata);
        // The dispatchers would skip a rule that does not parse: say so now.
        cmq_rules::Rule::parse(&r.spec.sql).with_context(|| {
            format!(
                "invalid ForwardRule {ns}/{name} in {}: spec.sql",
                l.path.display()
            )
        })?;
        entries.push((
            Kind::ForwardRule,
            kv::entry_key(&ns, &name),
            kv::encode_rule(r)?,
        ));
    }
    if entries.is_empty() {
        bail!(
            "{} holds no DeviceCredential, TopicAcl or ForwardRule",
            file.display()
        );
    }
    let [credentials, acls, rules] = target.buckets().await?;
    for (kind, key, bytes) in entries {
        let store = match kind {
            Kind::DeviceCredential => &credentials,
            Kind::TopicAcl => &acls,
            Kind::ForwardRule => &rules,
        };
        store
            .put(&key, bytes.into())
            .await
            .with_context(|| format!("cannot write {key}"))?;
        println!("applied {kind:?} {key}");
    }
    Ok(())
}
