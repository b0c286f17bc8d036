/* A stalled disk for `cargo xtask chaos` (fault `stall`): preloaded into raft-node, it makes
 * fsync and fdatasync wait while the file named by RAFT_CHAOS_STALL_FLAG exists, then do
 * the real call. Without the variable (or the file) the calls go straight through.
 * C, outside the Rust workspace (which forbids unsafe code); built by xtask with `cc`. */
#define _GNU_SOURCE
#include <dlfcn.h>
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

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    wait_while_stalled();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    wait_while_stalled();
    return real(fd);
}
