/*
 * fsutil.h - small blocking file-system helpers (directories, whole-file
 * replacement).  Callers decide which thread they run on.
 */
#ifndef STREAMD_FSUTIL_H
#define STREAMD_FSUTIL_H

#include <stddef.h>

/* mkdir -p.  0 or -errno. */
int sd_fs_mkdirs(const char *path);
/* fsync of a file by name.  0 or -errno. */
int sd_fs_sync_file(const char *path);
/* fsync of a directory, making its entries durable.  0 or -errno. */
int sd_fs_sync_dir(const char *path);
/* Replaces dir/name with data: write "name.tmp", fsync it when do_sync,
 * rename over name, fsync dir when do_sync.  0 or -errno. */
int sd_fs_write_file(const char *dir, const char *name, const char *data, size_t len, int do_sync);
/* rm -rf path.  0 or -errno (ENOENT is success). */
int sd_fs_remove_tree(const char *path);
/* Removes everything inside dir, keeping dir.  0 or -errno. */
int sd_fs_remove_children(const char *dir);

#endif
