//! What `modelship deploy compose|swarm --apply` checks before anything starts: the images it
//! needs are on the engine (or can be pulled), a mounted registry directory is writable by the
//! image's user, and the host ports it publishes are free. Each check is a pure function of
//! what was observed (file modes, ACL text, which ports answer, which images exist), so the
//! decisions and their messages are table tests; the observing is done by the callers.

use std::path::Path;

use modelship_deploy::description::UID;

/// A file's owner, group and mode bits, with its POSIX ACL entries when it has any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub acl: Vec<AclEntry>,
}

/// One line of `getfacl -cn`: `user:10001:rwx`, `mask::rw-`, `group::r-x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub kind: AclKind,
    /// The named user or group; `None` for the owner, owning group, mask and other entries.
    pub id: Option<u32>,
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclKind {
    User,
    Group,
    Mask,
    Other,
}

/// `getfacl -cn PATH`'s access entries (default entries, `default:...`, are skipped).
pub fn parse_acl(text: &str) -> Vec<AclEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let mut parts = line.split(':');
            let (kind, id, perms) = (parts.next()?, parts.next()?, parts.next()?);
            let kind = match kind {
                "user" => AclKind::User,
                "group" => AclKind::Group,
                "mask" => AclKind::Mask,
                "other" => AclKind::Other,
                _ => return None,
            };
            let id = if id.is_empty() { None } else { Some(id.parse().ok()?) };
            let perms = perms.as_bytes();
            (perms.len() == 3).then(|| AclEntry { kind, id, read: perms[0] == b'r', write: perms[1] == b'w', execute: perms[2] == b'x' })
        })
        .collect()
}

/// Whether `uid` (in group `gid`) may read and write the file (and search the directory): the
/// POSIX access check, over the ACL when there is one, else the mode bits.
pub fn read_write(access: &Access, uid: u32, gid: u32, directory: bool) -> bool {
    let enough = |r: bool, w: bool, x: bool| r && w && (x || !directory);
    let bits = |shift: u32| {
        let b = (access.mode >> shift) & 7;
        (b & 4 != 0, b & 2 != 0, b & 1 != 0)
    };
    if uid == 0 {
        return true;
    }
    if access.uid == uid {
        let (r, w, x) = bits(6);
        return enough(r, w, x);
    }
    let mask = access.acl.iter().find(|e| e.kind == AclKind::Mask).map_or((true, true, true), |m| (m.read, m.write, m.execute));
    if let Some(e) = access.acl.iter().find(|e| e.kind == AclKind::User && e.id == Some(uid)) {
        return enough(e.read && mask.0, e.write && mask.1, e.execute && mask.2);
    }
    let groups: Vec<(bool, bool, bool)> = if access.acl.is_empty() {
        if access.gid == gid { vec![bits(3)] } else { Vec::new() }
    } else {
        access
            .acl
            .iter()
            .filter(|e| e.kind == AclKind::Group && (e.id == Some(gid) || (e.id.is_none() && access.gid == gid)))
            .map(|e| (e.read && mask.0, e.write && mask.1, e.execute && mask.2))
            .collect()
    };
    if !groups.is_empty() {
        return groups.iter().any(|(r, w, x)| enough(*r, *w, *x));
    }
    let (r, w, x) = bits(0);
    enough(r, w, x)
}

/// The refusal for a registry directory the container's user cannot write, or `None`. `files`
/// are the directory itself (first) and the SQLite files in it, each with its access.
pub fn registry_problem(dir: &Path, files: &[(String, Access, bool)]) -> Option<String> {
    let blocked: Vec<&str> = files.iter().filter(|(_, access, is_dir)| !read_write(access, UID, UID, *is_dir)).map(|(name, _, _)| name.as_str()).collect();
    if blocked.is_empty() {
        return None;
    }
    let dir = dir.display();
    Some(format!(
        "the registry directory {dir} is not writable by the container's user (uid {UID}), which SQLite needs even to read it: {} \
         (the server would stop on `attempt to write a readonly database`). Give uid {UID} access and keep yours: \
         `setfacl -R -m u:{UID}:rwX,d:u:{UID}:rwX,d:u:$(id -u):rwX {dir}` (package acl); or, on a machine of your own, `chmod -R a+rwX {dir}`",
        blocked.join(", ")
    ))
}

/// A host port the deployment publishes, the description key that sets it, and the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub port: u16,
    pub key: &'static str,
    pub loopback: bool,
}

/// The refusals for ports already in use by something other than this deployment itself
/// (`own`: the ports its running containers or services publish, which an update keeps).
pub fn port_problems(wanted: &[Published], in_use: impl Fn(&Published) -> bool, own: &[u16]) -> Vec<String> {
    wanted
        .iter()
        .filter(|p| !own.contains(&p.port) && in_use(p))
        .map(|p| format!("host port {} ({}) is in use: stop what listens there, or set {} in the description to a free port", p.port, p.key, p.key))
        .collect()
}

/// The host ports in `docker ps --format '{{.Ports}}'` or `docker service ls --format
/// '{{.Ports}}'` lines: `0.0.0.0:8000->8000/tcp, :::8000->8000/tcp`, `*:8000->8000/tcp`.
pub fn published_ports(lines: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = lines
        .split([',', '\n'])
        .filter_map(|mapping| {
            let host = mapping.split("->").next()?;
            if !mapping.contains("->") {
                return None;
            }
            host.rsplit(':').next()?.trim().parse().ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// An image the deployment runs, the description key (or flag) that names it, and how to make
/// it where it cannot be pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededImage {
    pub reference: String,
    pub key: &'static str,
    pub remedy: String,
}

/// The refusal for an image that is neither on the engine nor pullable (`pull_error`: the
/// pull's last line).
pub fn image_problem(image: &NeededImage, pull_error: &str) -> String {
    format!(
        "the image {} ({}) is not on this Docker engine and cannot be pulled ({}): {}",
        image.reference,
        image.key,
        pull_error.trim(),
        image.remedy
    )
}

/// How to make an auxiliary image on a machine that cannot pull it.
pub fn auxiliary_remedy(key: &str, test_image: &str) -> String {
    format!(
        "pull it where a registry is reachable and `docker save`/`docker load` it here, or set {key} to an image this engine has \
         (in modelship's repository, scripts/docker-test-images.sh builds {test_image} from Debian's packages)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(uid: u32, gid: u32, mode: u32, acl: &str) -> Access {
        Access { uid, gid, mode, acl: parse_acl(acl) }
    }

    #[test]
    fn acl_lines_are_read_as_getfacl_writes_them() {
        let acl = parse_acl("user::rwx\nuser:10001:rwx\t#effective:r-x\ngroup::r-x\nmask::r-x\nother::---\ndefault:user:10001:rwx\n");
        assert_eq!(acl.len(), 5);
        assert_eq!(acl[1], AclEntry { kind: AclKind::User, id: Some(10001), read: true, write: true, execute: true });
        assert_eq!(acl[3], AclEntry { kind: AclKind::Mask, id: None, read: true, write: false, execute: true });
    }

    #[test]
    fn who_may_write_a_registry_directory() {
        let full_acl = "user::rwx\nuser:10001:rwx\ngroup::r-x\nmask::rwx\nother::r-x\n";
        let table: &[(&str, Access, bool, bool)] = &[
            ("root's 0755 directory", access(0, 0, 0o755, ""), true, false),
            ("world-writable", access(0, 0, 0o777, ""), true, true),
            ("owned by the image's user", access(UID, 0, 0o700, ""), true, true),
            ("group-writable with its gid", access(1000, UID, 0o770, ""), true, true),
            ("group-writable, another gid", access(1000, 1000, 0o775, ""), true, false),
            ("a named-user ACL", access(1000, 1000, 0o775, full_acl), true, true),
            ("a named-user ACL under a read-only mask", access(1000, 1000, 0o755, "user::rwx\nuser:10001:rwx\ngroup::r-x\nmask::r-x\nother::r-x\n"), true, false),
            ("a file without x is fine", access(1000, 1000, 0o664, "user::rw-\nuser:10001:rw-\ngroup::r--\nmask::rw-\nother::r--\n"), false, true),
            ("a directory without x is not", access(1000, 1000, 0o666, ""), true, false),
            ("a 0644 database file", access(0, 0, 0o644, ""), false, false),
        ];
        for (what, a, dir, expected) in table {
            assert_eq!(read_write(a, UID, UID, *dir), *expected, "{what}");
        }
    }

    #[test]
    fn a_registry_refusal_names_the_files_and_the_fix() {
        let dir = Path::new("/srv/registry");
        let ok = access(0, 0, 0o777, "");
        assert_eq!(registry_problem(dir, &[("/srv/registry".to_owned(), ok.clone(), true)]), None);
        let message = registry_problem(dir, &[("/srv/registry".to_owned(), ok, true), ("/srv/registry/registry.db".to_owned(), access(0, 0, 0o644, ""), false)]).unwrap();
        assert_eq!(
            message,
            "the registry directory /srv/registry is not writable by the container's user (uid 10001), which SQLite needs even to read it: /srv/registry/registry.db \
             (the server would stop on `attempt to write a readonly database`). Give uid 10001 access and keep yours: \
             `setfacl -R -m u:10001:rwX,d:u:10001:rwX,d:u:$(id -u):rwX /srv/registry` (package acl); or, on a machine of your own, `chmod -R a+rwX /srv/registry`"
        );
    }

    #[test]
    fn busy_ports_are_named_with_their_key_unless_the_deployment_holds_them() {
        let wanted = [
            Published { port: 8000, key: "ports.http", loopback: false },
            Published { port: 8081, key: "ports.grpc", loopback: false },
            Published { port: 9090, key: "prometheus.port", loopback: true },
        ];
        let busy = |p: &Published| p.port != 8081;
        assert_eq!(
            port_problems(&wanted, busy, &[9090]),
            ["host port 8000 (ports.http) is in use: stop what listens there, or set ports.http in the description to a free port"]
        );
        assert!(port_problems(&wanted, |_| false, &[]).is_empty());
    }

    #[test]
    fn published_ports_are_read_from_docker_listings() {
        assert_eq!(published_ports("0.0.0.0:8000->8000/tcp, :::8000->8000/tcp, 127.0.0.1:9090->9090/tcp\n6379/tcp\n*:8081->8081/tcp\n"), [8000, 8081, 9090]);
        assert!(published_ports("").is_empty());
    }

    #[test]
    fn an_image_refusal_says_how_to_make_it() {
        let redis = NeededImage { reference: "redis:7.4-bookworm".to_owned(), key: "feature_store.image", remedy: auxiliary_remedy("feature_store.image", "modelship-test/redis:7") };
        assert_eq!(
            image_problem(&redis, "Error response from daemon: dial tcp: lookup registry-1.docker.io: no such host\n"),
            "the image redis:7.4-bookworm (feature_store.image) is not on this Docker engine and cannot be pulled (Error response from daemon: dial tcp: lookup registry-1.docker.io: no such host): \
             pull it where a registry is reachable and `docker save`/`docker load` it here, or set feature_store.image to an image this engine has \
             (in modelship's repository, scripts/docker-test-images.sh builds modelship-test/redis:7 from Debian's packages)"
        );
    }
}
