//! `sharelink link` on real filesystems: every row of SPEC's table.

mod common;
use common::*;
use std::fs;

#[test]
fn baked_dir_in_overlay_lower_layer_moves_to_tmpfs_share() {
    if !in_private_mount_ns("baked_dir_in_overlay_lower_layer_moves_to_tmpfs_share") {
        return;
    }
    let sb = Sandbox::new("\"data\" = { share = \"data\", dirs = [\"input\", \"output\"] }");
    let lower = sb.root.path().join("lower");
    let n = make_tree(&lower.join("data"), 300, 200_000, 7);
    let before = snapshot(&lower.join("data"));
    assert!(before.len() > n);
    // The app root is an overlay whose baked data sits in the lower layer.
    let merged = mount_overlay(&sb.root.path().join("ovl"), &lower);
    fs::remove_dir(&sb.app).unwrap();
    std::os::unix::fs::symlink(&merged, &sb.app).unwrap();
    mount_tmpfs(&sb.share, "64m");
    // Precondition that makes this test mean something: rename gives EXDEV.
    let e = fs::rename(merged.join("data"), merged.join("moved")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));

    sb.write_config(
        true,
        "\"data\" = { share = \"data\", dirs = [\"input\", \"output\"] }",
    );
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(
        fs::read_link(merged.join("data")).unwrap(),
        sb.share.join("data")
    );
    let mut after = snapshot(&sb.share.join("data"));
    for d in ["input", "output"] {
        assert_eq!(after.remove(std::path::Path::new(d)), Some(Node::Dir));
    }
    assert_eq!(after, before);
    assert!(!sb.share.join(".data.sharelink-staging").exists());
    let o = sb.run(["status"]);
    expect_code(&o, 0);
}
