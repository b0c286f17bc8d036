/* A stalled or failing disk for `cargo xtask chaos` (faults `stall` and `eio`): preloaded into
 * raft-node, it makes fsync and fdatasync wait while the file named by RAFT_CHAOS_STALL_FLAG
 * exists, then do the real call; and fail with EIO, without syncing, while the file named by
 * RAFT_CHAOS_EIO_FLAG exists (a device that reports write-back errors: what was written may
 * or may not be on disk). Without the variables (or the files) the calls go straight through.
 * C, outside the Rust workspace (which forbids unsafe code); built by xtask with `cc`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static void wait_while_stalled(void) {
    const char *flag = getenv("RAFT_CHAOS_STALL_FLAG");
    if (flag == NULL) {
        return;
    }
    while (access(flag, F_OK) == 0) {
        usleep(10000);
    }
}

static int failing(void) {
    const char *flag = getenv("RAFT_CHAOS_EIO_FLAG");
    return flag != NULL && access(flag, F_OK) == 0;
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    wait_while_stalled();
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    wait_while_stalled();
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
