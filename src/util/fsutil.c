/*
 * fsutil.c - blocking file-system helpers; see fsutil.h.
 */
#include "util/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sd_fs_mkdirs(const char *path) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof(buf)) return -ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
  return 0;
}

int sd_fs_sync_file(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = fsync(fd) == 0 ? 0 : -errno;
  close(fd);
  return rc;
}

int sd_fs_sync_dir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = fsync(fd) == 0 ? 0 : -errno;
  close(fd);
  return rc;
}

int sd_fs_write_file(const char *dir, const char *name, const char *data, size_t len, int do_sync) {
  char path[PATH_MAX], tmp[PATH_MAX];
  int rc = 0;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  size_t done = 0;
  while (done < len) {
    ssize_t w = write(fd, data + done, len - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      rc = -errno;
      goto fail;
    }
    done += (size_t)w;
  }
  if (do_sync && fsync(fd) != 0) {
    rc = -errno;
    goto fail;
  }
  close(fd);
  if (rename(tmp, path) != 0) {
    rc = -errno;
    unlink(tmp);
    return rc;
  }
  return do_sync ? sd_fs_sync_dir(dir) : 0;
fail:
  close(fd);
  unlink(tmp);
  return rc;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  int rc = type == FTW_DP ? rmdir(path) : unlink(path);
  return rc != 0 && errno != ENOENT ? -errno : 0;
}

int sd_fs_remove_tree(const char *path) {
  int rc = nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  if (rc == -1) return errno == ENOENT ? 0 : -errno;
  return rc;
}

int sd_fs_remove_children(const char *dir) {
  DIR *d = opendir(dir);
  char path[PATH_MAX];
  int rc = 0;
  if (d == NULL) return -errno;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
    int r = sd_fs_remove_tree(path);
    if (r != 0 && rc == 0) rc = r;
  }
  closedir(d);
  return rc;
}
