//! The twin's own promises: what a power cut keeps and drops, and the
//! injected faults.

use super::*;

/// A twin with a durable directory `/d`.
fn with_dir() -> (SimFs, PathBuf) {
    let fs = SimFs::new();
    let dir = PathBuf::from("/d");
    fs.create_dir(&dir).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync root");
    (fs, dir)
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_vanishes() {
    let (fs, dir) = with_dir();
    let path = dir.join("log");
    let f = fs.open_append(&path).expect("open");
    f.append(b"synced").expect("append");
    f.sync_data().expect("sync");
    fs.sync_dir(&dir).expect("sync dir");
    f.append(b" and not").expect("append");
    assert_eq!(fs.read(&path).expect("read"), b"synced and not");

    let fs = fs.power_cut();
    assert_eq!(fs.read(&path).expect("read"), b"synced");
    let err = f.append(b"x").expect_err("the old process is gone");
    assert!(err.to_string().contains("power cut"), "{err}");
}

#[test]
fn a_created_file_whose_directory_was_not_synced_vanishes() {
    let (fs, dir) = with_dir();
    let path = dir.join("new");
    let f = fs.open_append(&path).expect("create");
    f.append(b"data").expect("append");
    f.sync_data().expect("its data is synced, its entry is not");
    // A directory created without syncing its parent goes too, with
    // everything in it.
    fs.create_dir(&dir.join("sub")).expect("mkdir");
    fs.sync_dir(&dir.join("sub"))
        .expect("sync the new directory only");

    let fs = fs.power_cut();
    assert!(!fs.exists(&path).expect("exists"));
    assert!(!fs.exists(&dir.join("sub")).expect("exists"));
    assert!(fs.list_dir(&dir).expect("list").is_empty());
}

#[test]
fn a_rename_without_a_directory_sync_is_undone_and_with_one_it_stays() {
    let (fs, dir) = with_dir();
    for name in ["a", "b"] {
        let f = fs.open_append(&dir.join(name)).expect("create");
        f.append(name.as_bytes()).expect("append");
        f.sync_data().expect("sync");
    }
    fs.sync_dir(&dir).expect("sync dir");
    fs.rename(&dir.join("a"), &dir.join("c")).expect("rename");
    let fs = fs.power_cut();
    let mut names = fs.list_dir(&dir).expect("list");
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // Replacing a file, then syncing the directory: durable.
    fs.rename(&dir.join("a"), &dir.join("b")).expect("rename");
    fs.sync_dir(&dir).expect("sync dir");
    let fs = fs.power_cut();
    assert_eq!(fs.list_dir(&dir).expect("list"), ["b"]);
    assert_eq!(fs.read(&dir.join("b")).expect("read"), b"a");
}

#[test]
fn a_remove_without_a_directory_sync_is_undone() {
    let (fs, dir) = with_dir();
    let path = dir.join("old");
    let f = fs.open_append(&path).expect("create");
    f.append(b"kept").expect("append");
    f.sync_data().expect("sync");
    fs.sync_dir(&dir).expect("sync dir");
    fs.remove_file(&path).expect("remove");
    assert!(!fs.exists(&path).expect("exists"));
    // An open file outlives its name, as a descriptor does.
    let mut buf = [0; 4];
    f.read_exact_at(&mut buf, 0).expect("read the removed file");

    let fs = fs.power_cut();
    assert_eq!(fs.read(&path).expect("back"), b"kept");
    fs.remove_file(&path).expect("remove");
    fs.sync_dir(&dir).expect("sync dir");
    let fs = fs.power_cut();
    assert!(!fs.exists(&path).expect("exists"));
}

#[test]
fn an_injected_sync_failure_is_reported_and_makes_nothing_durable() {
    let (fs, dir) = with_dir();
    let path = dir.join("log");
    let f = fs.open_append(&path).expect("create");
    fs.sync_dir(&dir).expect("sync dir");
    f.append(b"lost").expect("append");
    fs.fail_sync(SyncFault::Path(path.clone()));
    let err = f.sync_data().expect_err("injected");
    assert_eq!(err.raw_os_error(), Some(EIO));
    assert_eq!(fs.durable_content(&path).expect("durable"), b"");

    // The second sync from now fails, whatever it syncs.
    fs.fail_sync(SyncFault::Nth(2));
    f.sync_data().expect("the first one passes");
    assert_eq!(fs.durable_content(&path).expect("durable"), b"lost");
    let err = fs.sync_dir(&dir).expect_err("the second one fails");
    assert_eq!(err.raw_os_error(), Some(EIO));
    fs.sync_dir(&dir).expect("the third one passes");
}

#[test]
fn writes_fail_with_enospc_once_the_disk_is_full() {
    let (fs, dir) = with_dir();
    fs.set_capacity(Some(10));
    let f = fs.open_append(&dir.join("a")).expect("create");
    f.append(b"123456").expect("fits");
    let err = f.append(b"789abc").expect_err("full");
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    // What fit was written, as a short write(2) leaves it.
    assert_eq!(f.len().expect("len"), 10);
    let g = fs.open_write(&dir.join("b")).expect("create");
    assert_eq!(
        g.write_at(b"x", 0).expect_err("full").kind(),
        io::ErrorKind::StorageFull
    );
    // Cutting a file back frees its space.
    f.set_len(6).expect("cut");
    g.write_at(b"xyzw", 0).expect("fits again");
    assert_eq!(fs.read(&dir.join("b")).expect("read"), b"xyzw");
    fs.set_capacity(None);
    f.append(&[0; 100]).expect("no limit");
}

#[test]
fn torn_writes_keep_a_seeded_prefix_of_the_unsynced_tail() {
    let cut = |seed| {
        let fs = SimFs::with_torn_writes(seed);
        fs.create_dir(Path::new("/d")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync root");
        let path = Path::new("/d/log");
        let f = fs.open_append(path).expect("create");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        f.append(b"durable|").expect("append");
        f.sync_data().expect("sync");
        f.append(b"0123456789abcdef").expect("append");
        fs.power_cut().read(path).expect("read")
    };
    let mut shapes = HashSet::new();
    for seed in 0..64 {
        let left = cut(seed);
        assert_eq!(left, cut(seed), "the same seed, the same cut");
        assert!(left.starts_with(b"durable|"), "{left:?}");
        let tail = &left[8..];
        assert!(tail.len() <= 16, "{left:?}");
        let written = tail.iter().take_while(|b| **b != 0).count();
        assert_eq!(&tail[..written], &b"0123456789abcdef"[..written]);
        assert!(tail[written..].iter().all(|b| *b == 0), "{left:?}");
        shapes.insert((written, tail.len()));
    }
    assert!(shapes.len() > 8, "cuts vary with the seed: {shapes:?}");
}

#[test]
fn killing_the_process_keeps_every_write_but_ends_its_handles() {
    let (fs, dir) = with_dir();
    let path = dir.join("log");
    let f = fs.open_append(&path).expect("create");
    f.append(b"in the page cache").expect("append");
    let fs = fs.kill_process();
    assert!(f.len().is_err());
    assert_eq!(fs.read(&path).expect("read"), b"in the page cache");
    // Still not durable: a power cut now drops it.
    let fs = fs.power_cut();
    assert!(!fs.exists(&path).expect("exists"));
}
