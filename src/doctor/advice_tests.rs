//! The advice from real mountinfo lines (as the kernel writes them for
//! each filesystem) and from measured capabilities.

use super::*;
use crate::doctor::capabilities::Supports;
use crate::doctor::mount::parse_line;

/// An Azure Files share mounted as docker-compose.prod.yml does.
const CIFS_GOOD: &[u8] = b"1034 1012 0:95 / /mnt/fileshare rw,relatime shared:530 - cifs //acct.file.core.windows.net/share rw,vers=3.1.1,cache=strict,username=acct,uid=10001,noforceuid,gid=10001,noforcegid,addr=20.60.1.2,file_mode=0770,dir_mode=0770,soft,persistenthandles,nounix,serverino,mapposix,mfsymlinks,nobrl,rsize=1048576,wsize=1048576,bsize=1048576,echo_interval=60,actimeo=30,closetimeo=1";
/// The same share mounted with the client's defaults.
const CIFS_BARE: &[u8] = b"1034 1012 0:95 / /mnt/fileshare rw,relatime shared:530 - cifs //acct.file.core.windows.net/share rw,vers=3.1.1,cache=strict,username=acct,uid=0,noforceuid,gid=0,noforcegid,addr=20.60.1.2,file_mode=0755,dir_mode=0755,soft,nounix,serverino,mapposix,rsize=1048576,wsize=1048576,bsize=1048576,echo_interval=60,actimeo=1,closetimeo=1";
const NFS4: &[u8] = b"401 29 0:52 / /mnt/fileshare rw,relatime shared:212 - nfs4 acct.file.core.windows.net:/acct/share rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.4,local_lock=none,addr=10.0.0.5";
const NFS4_SOFT: &[u8] = b"401 29 0:52 / /mnt/fileshare rw,relatime shared:212 - nfs4 srv:/export rw,vers=4.2,soft,proto=tcp,timeo=600,retrans=2,sec=sys,local_lock=all,addr=10.0.0.5";
const FUSE: &[u8] = b"88 29 0:47 / /mnt/fileshare rw,nosuid,nodev,relatime shared:45 - fuse.latencyfs latencyfs:4242 rw,user_id=0,group_id=0,default_permissions,allow_other";
const OVERLAY: &[u8] = b"612 590 0:61 / / rw,relatime master:312 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/123/diff,workdir=/var/lib/docker/overlay2/123/work";

fn mount(line: &[u8]) -> MountEntry {
    parse_line(line).expect("a valid mountinfo line")
}

fn app() -> RunUser {
    RunUser {
        name: "app".into(),
        uid: 10001,
        gid: 10001,
        groups: vec![10001],
    }
}

fn said(advice: &[Advice], needle: &str) -> Option<Level> {
    advice
        .iter()
        .find(|a| a.message.contains(needle))
        .map(|a| a.level)
}

#[test]
fn cifs_with_the_recommended_options_needs_nothing() {
    let a = from_mount(&mount(CIFS_GOOD), Some(&app()));
    assert!(a.is_empty(), "{a:#?}");
}

#[test]
fn cifs_without_mfsymlinks_and_nobrl_names_both_and_where_to_set_them() {
    let a = from_mount(&mount(CIFS_BARE), None);
    assert_eq!(
        said(&a, "without `mfsymlinks`"),
        Some(Level::Warn),
        "{a:#?}"
    );
    assert_eq!(said(&a, "without `nobrl`"), Some(Level::Warn), "{a:#?}");
    assert!(said(&a, "database is locked").is_some());
    for place in [
        "driver_opts",
        "azurefile-csi StorageClass",
        "Container Apps",
    ] {
        assert!(
            a.iter().all(|x| x.message.contains(place)),
            "{place}: {a:#?}"
        );
    }
}

#[test]
fn cifs_owned_by_root_leaves_the_run_user_unable_to_write() {
    let a = from_mount(&mount(CIFS_BARE), Some(&app()));
    let m = a
        .iter()
        .find(|x| x.message.contains("uid=10001,gid=10001"))
        .unwrap_or_else(|| panic!("{a:#?}"));
    assert!(
        m.message.contains("uid 0, gid 0, dir_mode 0755") && m.message.contains("run user app"),
        "{m:?}"
    );
    // Root writes anyway; `noperm` turns the client's checks off.
    let root = RunUser { uid: 0, ..app() };
    assert!(said(&from_mount(&mount(CIFS_BARE), Some(&root)), "uid=").is_none());
}

#[test]
fn cifs_file_mode_without_write_is_named() {
    let line = String::from_utf8(CIFS_GOOD.to_vec())
        .unwrap()
        .replace("file_mode=0770", "file_mode=0550");
    let a = from_mount(&mount(line.as_bytes()), Some(&app()));
    assert_eq!(a.len(), 1, "{a:#?}");
    assert!(a[0].message.contains("cannot write files"), "{a:#?}");
    // Another uid, but in the mount's group with group-writable modes: fine.
    let member = RunUser {
        uid: 2000,
        gid: 2000,
        groups: vec![2000, 10001],
        name: "other".into(),
    };
    assert!(from_mount(&mount(CIFS_GOOD), Some(&member)).is_empty());
}

#[test]
fn nfs4_hard_needs_nothing_soft_and_local_locks_are_named() {
    assert!(from_mount(&mount(NFS4), Some(&app())).is_empty());
    let a = from_mount(&mount(NFS4_SOFT), None);
    assert_eq!(said(&a, "`soft`"), Some(Level::Warn), "{a:#?}");
    assert_eq!(said(&a, "local locks"), Some(Level::Info), "{a:#?}");
    assert_eq!(attr_cache(Some(&mount(NFS4))), Duration::from_secs(60));
}

#[test]
fn fuse_is_as_measured_overlay_is_local() {
    let a = from_mount(&mount(FUSE), None);
    assert_eq!(said(&a, "fuse.latencyfs"), Some(Level::Info), "{a:#?}");
    let a = from_mount(&mount(OVERLAY), None);
    assert_eq!(said(&a, "not a network share"), Some(Level::Warn), "{a:#?}");
    assert_eq!(attr_cache(Some(&mount(CIFS_GOOD))), Duration::from_secs(30));
}

fn measured(supports: Supports) -> Measured {
    Measured {
        supports,
        owners_probed: true,
        case_insensitive: false,
        round_trip_ms: 1.0,
        parallel_op_ms: 0.1,
        in_flight: 32,
        clock_skew_ms: Some(3.0),
    }
}

const ALL: Supports = Supports {
    symlinks: true,
    hard_links: true,
    xattrs: true,
    modes: true,
    owners: true,
    special_files: true,
    byte_range_locks: true,
};

#[test]
fn measured_problems_not_repeated_when_the_options_explain_them() {
    let lease = Duration::from_secs(60);
    assert!(from_measured(&measured(ALL), None, lease).is_empty());
    let none = measured(Supports::default());
    let generic = from_measured(&none, None, lease);
    assert_eq!(said(&generic, "does not keep symlinks"), Some(Level::Warn));
    assert_eq!(said(&generic, "byte-range locks"), Some(Level::Warn));
    assert_eq!(said(&generic, "hard links"), Some(Level::Info));
    let bare = mount(CIFS_BARE);
    let on_smb = from_measured(&none, Some(&bare), lease);
    assert!(
        said(&on_smb, "does not keep symlinks").is_none(),
        "{on_smb:#?}"
    );
    assert!(
        said(&on_smb, "byte-range locks (fcntl)").is_none(),
        "{on_smb:#?}"
    );
}

#[test]
fn slow_round_trip_and_clock_skew_near_the_lease() {
    let lease = Duration::from_secs(60);
    let mut m = measured(ALL);
    m.round_trip_ms = 35.0;
    m.clock_skew_ms = Some(-20_000.0);
    let good = mount(CIFS_GOOD);
    let a = from_measured(&m, Some(&good), lease);
    assert_eq!(said(&a, "round trip 35.0 ms"), Some(Level::Warn), "{a:#?}");
    // 45 s − 30 s actimeo = 15 s tolerated: 20 s exceeds it.
    let s = a.iter().find(|x| x.message.contains("clocks")).unwrap();
    assert!(
        s.message.contains("20.0 s, which exceeds") && s.message.contains("(15 s"),
        "{s:?}"
    );
    m.clock_skew_ms = Some(2_000.0);
    assert!(said(&from_measured(&m, Some(&good), lease), "clock").is_none());
}
