/* What a FUSE request costs a daemon that does nothing: libfuse's own loop, one thread, as
 * tailsfs's daemon runs one. It answers LOOKUP with ENOENT, GETATTR of its root and GETXATTR
 * with ENODATA; the time of a getxattr(2) on its root is the kernel's round trip plus libfuse's.
 *
 * Build: cc -O2 -o floor-requests scripts/floor-requests.c $(pkg-config --cflags --libs fuse3)
 * Run:   ./floor-requests -f MOUNTPOINT        (until fusermount3 -u MOUNTPOINT); scripts/floor runs it
 */
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fuse_lowlevel.h>
#include <string.h>
#include <sys/stat.h>

static void null_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    if (ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = FUSE_ROOT_ID;
    st.st_mode = S_IFDIR | 0755;
    st.st_nlink = 2;
    fuse_reply_attr(req, &st, 1.0);
}

static void null_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    (void)parent;
    (void)name;
    fuse_reply_err(req, ENOENT);
}

static void null_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
    (void)ino;
    (void)name;
    (void)size;
    fuse_reply_err(req, ENODATA);
}

static const struct fuse_lowlevel_ops null_ops = {
    .getattr = null_getattr,
    .lookup = null_lookup,
    .getxattr = null_getxattr,
};

int main(int argc, char *argv[]) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_cmdline_opts opts;
    if (fuse_parse_cmdline(&args, &opts) != 0 || opts.mountpoint == NULL) {
        fuse_cmdline_help();
        return 2;
    }
    struct fuse_session *se = fuse_session_new(&args, &null_ops, sizeof null_ops, NULL);
    if (se == NULL || fuse_session_mount(se, opts.mountpoint) != 0)
        return 1;
    fuse_daemonize(opts.foreground);
    int ret = fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return ret == 0 ? 0 : 1;
}
