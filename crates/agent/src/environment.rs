//! The environment of a workload that `tessera agent run` starts. A kubelet
//! never hands a container its own environment: the container sees what its
//! image and pod spec set, plus its mounted files. The workload here gets the
//! same: nothing of the agent's (no `KUBECONFIG`, no `TESSERA_AGENT_*`, no
//! cloud or registry credential, no path of the agent's), only
//!
//! - a few harmless basics of the agent's own environment ([`INHERITED`]): the
//!   program search path, locale, time zone and terminal. There is no image,
//!   so the host's programs are the workload's and `-- sh -c '…'` must resolve
//!   as the user typed it; none of these holds a secret;
//! - `HOME`, set to the pod's root, as a container's home is inside the
//!   container: tools that look for `~/.kube/config`, `~/.docker/config.json`
//!   or `~/.aws` find nothing of the agent user's;
//! - what a container learns about itself: `TESSERA_TOKEN_DIR` and
//!   `TESSERA_SA_DIR` (its projected files), `TESSERA_API_SERVER` (as every
//!   container gets `KUBERNETES_SERVICE_HOST`), `TESSERA_NAMESPACE` and
//!   `TESSERA_POD_NAME` (the downward API);
//! - the variables the user asked for with `--env NAME=VALUE`, last, so they
//!   override any of the above.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;

/// Variables passed on from the agent's environment (plus every `LC_*`).
pub const INHERITED: [&str; 5] = ["PATH", "LANG", "LANGUAGE", "TZ", "TERM"];

/// A `--env NAME=VALUE` the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// A valid environment variable name (kube's rule).
    pub name: String,
    /// Its value.
    pub value: String,
}

impl std::str::FromStr for EnvVar {
    type Err = String;

    /// Parses `NAME=VALUE`; NAME follows kube's `IsEnvVarName`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let (name, value) = raw.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {raw:?}"))?;
        let mut chars = name.chars();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        let valid = chars.next().is_some_and(|c| valid_char(c) && !c.is_ascii_digit()) && chars.all(valid_char);
        if !valid {
            return Err(format!(
                "{name:?}: a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"
            ));
        }
        Ok(Self { name: name.to_owned(), value: value.to_owned() })
    }
}

/// What the workload learns about its pod.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// The pod's root (the workload's `HOME`).
    pub root: &'a Path,
    /// Where the extra projected tokens are.
    pub tokens_dir: &'a Path,
    /// Where the ServiceAccount's `token`, `ca.crt` and `namespace` are.
    pub service_account_dir: &'a Path,
    /// The API server URL.
    pub api_server: &'a str,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub pod_name: &'a str,
}

/// The workload's whole environment, built from the agent's own (`agent_env`,
/// usually `std::env::vars_os()`), the pod and the user's `--env`s.
pub fn workload_env(agent_env: impl IntoIterator<Item = (OsString, OsString)>, pod: PodContext<'_>, user: &[EnvVar]) -> BTreeMap<OsString, OsString> {
    let inherited = |name: &OsStr| name.to_str().is_some_and(|n| INHERITED.contains(&n) || n.starts_with("LC_"));
    let mut env: BTreeMap<OsString, OsString> = agent_env.into_iter().filter(|(name, _)| inherited(name)).collect();
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()).into_os_string();
    env.insert("HOME".into(), absolute(pod.root));
    env.insert("TESSERA_TOKEN_DIR".into(), absolute(pod.tokens_dir));
    env.insert("TESSERA_SA_DIR".into(), absolute(pod.service_account_dir));
    env.insert("TESSERA_API_SERVER".into(), pod.api_server.into());
    env.insert("TESSERA_NAMESPACE".into(), pod.namespace.into());
    env.insert("TESSERA_POD_NAME".into(), pod.pod_name.into());
    for var in user {
        env.insert(var.name.clone().into(), var.value.clone().into());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodContext<'static> {
        PodContext {
            root: Path::new("/r"),
            tokens_dir: Path::new("/r/var/run/secrets/tokens"),
            service_account_dir: Path::new("/r/var/run/secrets/kubernetes.io/serviceaccount"),
            api_server: "https://127.0.0.1:6443",
            namespace: "web",
            pod_name: "web-0",
        }
    }

    #[test]
    fn nothing_of_the_agent_but_the_basics_reaches_the_workload() {
        let agent: Vec<(OsString, OsString)> = [
            ("KUBECONFIG", "/home/admin/.kube/config"),
            ("TESSERA_AGENT_KUBECONFIG", "/etc/tessera/agent.kubeconfig"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
            ("SSH_AUTH_SOCK", "/tmp/ssh-agent.sock"),
            ("HOME", "/home/admin"),
            ("PATH", "/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("TESSERA_TOKEN_DIR", "/agent/own/dir"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let env = workload_env(agent, pod(), &["FOO=bar".parse().unwrap()]);
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap())).collect();
        let expected: Vec<(String, String)> = [
            ("FOO", "bar"),
            ("HOME", "/r"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("PATH", "/usr/bin:/bin"),
            ("TESSERA_API_SERVER", "https://127.0.0.1:6443"),
            ("TESSERA_NAMESPACE", "web"),
            ("TESSERA_POD_NAME", "web-0"),
            ("TESSERA_SA_DIR", "/r/var/run/secrets/kubernetes.io/serviceaccount"),
            ("TESSERA_TOKEN_DIR", "/r/var/run/secrets/tokens"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn the_users_variables_come_last_and_win() {
        let user: Vec<EnvVar> = ["PATH=/opt/bin", "KUBECONFIG=/explicit", "EMPTY="].iter().map(|s| s.parse().unwrap()).collect();
        let env = workload_env([("PATH".into(), "/usr/bin".into())], pod(), &user);
        assert_eq!(env.get(OsStr::new("PATH")).unwrap(), "/opt/bin");
        assert_eq!(env.get(OsStr::new("KUBECONFIG")).unwrap(), "/explicit");
        assert_eq!(env.get(OsStr::new("EMPTY")).unwrap(), "");
    }

    #[test]
    fn env_flag_names_follow_kube() {
        for good in ["A=1", "a.b-c_d=x=y", "_X=", "-dash=1"] {
            good.parse::<EnvVar>().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert_eq!("NOVALUE".parse::<EnvVar>().unwrap_err(), r#"expected NAME=VALUE, got "NOVALUE""#);
        for bad in ["1A=x", "=x", "A B=x", "A$=x"] {
            let err = bad.parse::<EnvVar>().unwrap_err();
            assert!(err.ends_with("a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"), "{bad}: {err}");
        }
        assert_eq!("a.b-c_d=x=y".parse::<EnvVar>().unwrap().value, "x=y");
    }
}
