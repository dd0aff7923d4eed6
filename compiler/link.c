/* link.c — object file → executable, by running the system C compiler.
 *
 * Takes the object lower_llvm.c wrote and links it with the runtime library libnnrt.a (which
 * supplies main() and everything but the kernels): `$CC OBJ LIBNNRT -lz -lm NNC_LINK_FLAGS -o
 * EXE` (zlib reads gzip-compressed IDX files).
 * libnnrt.a is looked for beside the running nnc (a build tree), then in ../lib/nnc/ (an
 * installed tree), then at the path CMake compiled in. No shell is involved. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pipe2 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nnc.h"

#ifndef NNC_LINK_FLAGS
#define NNC_LINK_FLAGS "" /* e.g. "-fsanitize=address,undefined" to match a sanitized runtime */
#endif

enum { MAX_ARGS = 64 };

/* Folder of the running executable, with its trailing '/', or "" if unknown. */
static char *exe_dir(void) {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return xstrdup("");
  buf[n] = '\0';
  char *slash = strrchr(buf, '/');
  return slash ? xstrndup(buf, (size_t)(slash - buf + 1)) : xstrdup("");
}

/* Path of libnnrt.a, or NULL after an error naming every place tried. */
static const char *find_runtime(void) {
  char *dir = exe_dir();
  const char *tried[3];
  int n = 0;
  if (*dir) {
    tried[n++] = xprintf("%slibnnrt.a", dir);
    tried[n++] = xprintf("%s../lib/nnc/libnnrt.a", dir);
  }
#ifdef NNRT_LIBRARY
  tried[n++] = NNRT_LIBRARY;
#endif
  for (int i = 0; i < n; i++)
    if (access(tried[i], R_OK) == 0) return tried[i];
  char *where = xstrdup("");
  for (int i = 0; i < n; i++) where = xprintf("%s%s%s", where, i ? ", " : "", tried[i]);
  fprintf(stderr, "nnc: error: cannot find the runtime library libnnrt.a (looked in %s)\n",
          n ? where : "no known place");
  return NULL;
}

/* Appends the space-separated words of `s` to argv. */
static void split_words(const char *s, char **argv, int *argc) {
  while (*s) {
    while (*s == ' ') s++;
    const char *end = s;
    while (*end && *end != ' ') end++;
    if (end > s && *argc < MAX_ARGS - 8) /* room for the fixed arguments */
      argv[(*argc)++] = xstrndup(s, (size_t)(end - s));
    s = end;
  }
}

/* Runs argv; returns its exit status, or -1 after an error was printed. An exec failure is
 * sent back through a close-on-exec pipe so it is reported as such, not as "status 127". */
static int run(char **argv) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    fprintf(stderr, "nnc: error: cannot run %s: %s\n", argv[0], strerror(errno));
    return -1;
  }
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "nnc: error: cannot run %s: %s\n", argv[0], strerror(errno));
    close(pipefd[0]);
    close(pipefd[1]);
    return -1;
  }
  if (pid == 0) {
    close(pipefd[0]);
    execvp(argv[0], argv);
    int e = errno;
    ssize_t w = write(pipefd[1], &e, sizeof e);
    (void)w;
    _exit(127);
  }
  close(pipefd[1]);
  int exec_errno = 0;
  ssize_t got;
  do got = read(pipefd[0], &exec_errno, sizeof exec_errno);
  while (got < 0 && errno == EINTR);
  close(pipefd[0]);
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      fprintf(stderr, "nnc: error: waiting for %s: %s\n", argv[0], strerror(errno));
      return -1;
    }
  if (got == (ssize_t)sizeof exec_errno) {
    fprintf(stderr, "nnc: error: cannot run %s: %s\n", argv[0], strerror(exec_errno));
    return -1;
  }
  if (WIFSIGNALED(status)) {
    fprintf(stderr, "nnc: error: linking failed: %s was killed by signal %d\n", argv[0],
            WTERMSIG(status));
    return -1;
  }
  return WEXITSTATUS(status);
}

bool link_executable(const char *obj, const char *exe) {
  const char *lib = find_runtime();
  if (!lib) return false;
  char *argv[MAX_ARGS];
  int argc = 0;
  const char *cc = getenv("CC");
  split_words(cc && *cc ? cc : "cc", argv, &argc);
  if (argc == 0) argv[argc++] = xstrdup("cc"); /* $CC was all spaces */
  argv[argc++] = (char *)obj;
  argv[argc++] = (char *)lib;
  argv[argc++] = "-lz";
  argv[argc++] = "-lm";
  argv[argc++] = "-lpthread"; /* the runtime's thread pool (runtime/pool.c) */
  split_words(NNC_LINK_FLAGS, argv, &argc);
  argv[argc++] = "-o";
  argv[argc++] = (char *)exe;
  argv[argc] = NULL;
  int status = run(argv);
  if (status < 0) return false;
  if (status != 0) {
    fprintf(stderr, "nnc: error: linking failed: %s exited with status %d\n", argv[0], status);
    return false;
  }
  return true;
}
