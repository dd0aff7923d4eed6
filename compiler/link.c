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
#include "../runtime/embed.h"

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

/* Path of the library `file` (libnnrt.a, libnnembed.a), or NULL after an error naming every
 * place tried; `built` is where CMake put it (NULL if unknown). */
static const char *find_library(const char *file, const char *built) {
  char *dir = exe_dir();
  const char *tried[3];
  int n = 0;
  if (*dir) {
    tried[n++] = xprintf("%s%s", dir, file);
    tried[n++] = xprintf("%s../lib/nnc/%s", dir, file);
  }
  if (built) tried[n++] = built;
  for (int i = 0; i < n; i++)
    if (access(tried[i], R_OK) == 0) return tried[i];
  char *where = xstrdup("");
  for (int i = 0; i < n; i++) where = xprintf("%s%s%s", where, i ? ", " : "", tried[i]);
  fprintf(stderr, "nnc: error: cannot find the runtime library %s (looked in %s)\n", file,
          n ? where : "no known place");
  return NULL;
}

#ifndef NNRT_LIBRARY
#define NNRT_LIBRARY NULL
#endif
#ifndef NNEMBED_LIBRARY
#define NNEMBED_LIBRARY NULL
#endif

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
static int run(char **argv, const char *out) {
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
    int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    if (out && (fd < 0 || dup2(fd, 1) < 0)) {
      int e = errno;
      ssize_t w = write(pipefd[1], &e, sizeof e);
      (void)w;
      _exit(127);
    }
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
    fprintf(stderr, "nnc: error: %s was killed by signal %d\n", argv[0],
            WTERMSIG(status));
    return -1;
  }
  return WEXITSTATUS(status);
}

bool link_executable(const char *obj, const char *exe) {
  const char *lib = find_library("libnnrt.a", NNRT_LIBRARY);
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
  int status = run(argv, NULL);
  if (status < 0) return false;
  if (status != 0) {
    fprintf(stderr, "nnc: error: linking failed: %s exited with status %d\n", argv[0], status);
    return false;
  }
  return true;
}

bool link_run_to_file(char **argv, const char *out) {
  int status = run(argv, out);
  if (status < 0) return false;
  if (status != 0) {
    fprintf(stderr, "nnc: error: %s exited with status %d\n", argv[0], status);
    return false;
  }
  return true;
}

/* Runs argv (NULL-terminated); false after an error naming the tool. */
static bool run_tool(char **argv) { return link_run_to_file(argv, NULL); }

bool link_embed_object(const char *kernels, const char *out, const char *name) {
  const char *lib = find_library("libnnembed.a", NNEMBED_LIBRARY);
  if (!lib) return false;
  /* one relocatable object: the kernels and all of the support code */
  char *ld[] = {"ld", "-r", "-o", (char *)out, (char *)kernels, "--whole-archive", (char *)lib,
                "--no-whole-archive", NULL};
  if (!run_tool(ld)) return false;
  /* nne_X -> NAME_X; then NAME_X stay global and everything else becomes local */
  static const char *const api[] = {
#define API(x) #x,
      NNE_API(API)
#undef API
  };
  enum { N_API = sizeof api / sizeof *api };
  char *rename[2 * N_API + 3], *keep[2 * N_API + 3];
  int nr = 0, nk = 0;
  rename[nr++] = keep[nk++] = "objcopy";
  for (int i = 0; i < N_API; i++) {
    rename[nr++] = "--redefine-sym";
    rename[nr++] = xprintf("nne_%s=%s_%s", api[i], name, api[i]);
    keep[nk++] = "--keep-global-symbol";
    keep[nk++] = xprintf("%s_%s", name, api[i]);
  }
  rename[nr++] = keep[nk++] = (char *)out;
  rename[nr] = keep[nk] = NULL;
  return run_tool(rename) && run_tool(keep);
}
