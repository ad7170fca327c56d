#!/usr/bin/env bash
# musdb cannot even be imported without ffmpeg and ffprobe on the PATH.
# Install them with apt-get when we are root on a Debian-like system;
# otherwise say in one line how to get them.
set -u
if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ffmpeg (needed by musdb) with apt-get ..."
  if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; then
    exit 0
  fi
  echo "apt-get could not install ffmpeg" >&2
fi
echo "ffmpeg/ffprobe not found: install ffmpeg (Debian/Ubuntu: sudo apt-get install ffmpeg; macOS: brew install ffmpeg; conda: conda install ffmpeg); steps that read audio through musdb need it" >&2
exit 0
