//! The server a drill runs on its copy: which programs start it (those of the backup's
//! PostgreSQL major, or `[drill] bindir`), and the settings and files that keep it to itself
//! (127.0.0.1 and a free port, its socket and authentication inside the scratch directory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use lifeboat_pg::cluster::{self as pgc, LocalCluster};
use lifeboat_pg::recovery::quote_conf_value;

/// The bin directory of PostgreSQL `major`: `configured` (`[drill] bindir`) when given, which
/// must hold that major, else the one [`pgc::bindir_for_major`] finds. The error is what to record
/// and what to do.
pub(super) fn server_bindir(
    major: u32,
    configured: Option<&Path>,
) -> std::result::Result<PathBuf, (String, String)> {
    let install = format!(
        "install PostgreSQL {major}'s server (Debian/Ubuntu: apt-get install postgresql-{major}; \
         RHEL and derivatives: dnf install postgresql{major}-server), or set [drill] bindir to the \
         directory holding its postgres and pg_ctl"
    );
    let Some(dir) = configured else {
        return pgc::bindir_for_major(major).map_err(|e| {
            (
                format!("the backup is of PostgreSQL {major}, which cannot be started here: {e}"),
                install.clone(),
            )
        });
    };
    match pgc::bindir_major(dir) {
        Ok(found) if found == major => Ok(dir.to_path_buf()),
        Ok(found) => Err((
            format!(
                "the backup is of PostgreSQL {major}, but [drill] bindir = {} holds PostgreSQL \
                 {found}, which cannot start it",
                dir.display()
            ),
            format!(
                "set [drill] bindir to the bin directory of PostgreSQL {major}, or remove it to let \
                 the drill find one; otherwise {install}"
            ),
        )),
        Err(e) => Err((
            format!(
                "the backup is of PostgreSQL {major}, and the server programs in [drill] bindir = \
                 {} do not run: {e}",
                dir.display()
            ),
            install,
        )),
    }
}

/// Settings the copy starts with, after the cluster's own: whatever the backed-up cluster was
/// configured with, the copy must never collide with the real server (address, port, socket),
/// accept connections from anyone but the drill, log where the drill cannot read it, or fail on
/// settings that only matter in production (SSL files, memory sized for the real server).
fn drill_settings(scratch: &Path, port: u16) -> String {
    let path = |name: &str| quote_conf_value(&scratch.join(name).to_string_lossy());
    format!(
        "\n# Added by lifeboat drill for the scratch copy.\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = {}\n\
         unix_socket_permissions = 0700\n\
         hba_file = {}\n\
         ident_file = {}\n\
         logging_collector = off\n\
         log_destination = 'stderr'\n\
         ssl = off\n\
         hot_standby = on\n\
         shared_buffers = '128MB'\n\
         huge_pages = 'try'\n\
         synchronous_standby_names = ''\n\
         archive_mode = 'off'\n",
        quote_conf_value(&scratch.to_string_lossy()),
        path("pg_hba.conf"),
        path("pg_ident.conf"),
    )
}

/// Ready the restored directory to run with the server programs in `bindir`: our authentication
/// files and settings, the directory given to the cluster owner (the `postgres` OS user when we
/// are root), a free port.
pub(super) fn prepare_cluster(
    scratch: &Path,
    bindir: &Path,
) -> std::result::Result<LocalCluster, String> {
    let data = scratch.join("data");
    let owner = pgc::cluster_owner().map_err(|e| e.to_string())?;
    let port = lifeboat_pg::net::free_port().map_err(|e| e.to_string())?;
    let write = |path: &Path, text: &str| {
        fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    // Only the cluster owner can reach the socket (a 0700 directory), so trust is safe there;
    // no host line, so nothing reaches the copy over TCP.
    write(
        &scratch.join("pg_hba.conf"),
        "# lifeboat drill: the socket in this 0700 directory only.\nlocal all all trust\n",
    )?;
    write(&scratch.join("pg_ident.conf"), "")?;
    // A cluster whose postgresql.conf lives outside its data directory (Debian) is restored with
    // it under restored_config/; that copy names the real data directory, so it is not used.
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        write(
            &conf,
            "# lifeboat drill: the cluster's configuration lives outside its data directory \
             (see restored_config/); the copy runs with PostgreSQL's defaults.\n",
        )?;
    }
    let auto = data.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&drill_settings(scratch, port));
    write(&auto, &text)?;
    if let Some(owner) = &owner {
        pgc::chown_recursive(scratch, owner).map_err(|e| e.to_string())?;
    }
    let cluster = LocalCluster::existing_in(bindir, &data, port, scratch, owner)
        .map_err(|e| e.to_string())?;
    // Said here in the drill's terms: later, pg_ctl's own complaints would not name the cause.
    let socket = scratch.join(format!(".s.PGSQL.{port}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the scratch directory {} is too long a path for the server's Unix socket ({} bytes \
             with the socket's name, at most {MAX_SOCKET_PATH}): give --scratch-dir (or \
             drill.scratch_dir) a shorter directory, e.g. /var/tmp",
            scratch.display(),
            socket.as_os_str().len()
        ));
    }
    if let Some(owner) = &cluster.owner {
        // Runs as the owner in the scratch directory, as pg_ctl will.
        let probe = cluster
            .command("pg_ctl")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = probe {
            return Err(format!(
                "the `{}` OS user, which PostgreSQL runs as, cannot work in the scratch directory \
                 {} ({e}): give --scratch-dir (or drill.scratch_dir) a directory whose parents it \
                 may enter (chmod o+x), e.g. /var/tmp",
                owner.name,
                scratch.display()
            ));
        }
    }
    Ok(cluster.with_log_file(scratch.join("postgres.log")))
}

/// Longest Unix socket path the kernel accepts.
const MAX_SOCKET_PATH: usize = 107;
