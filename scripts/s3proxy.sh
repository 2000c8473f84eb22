#!/usr/bin/env bash
# The S3-compatible server the tests copy backups to: S3Proxy (Apache-2.0; a real S3 API with
# SigV4 authentication, here on its filesystem backend), run by Java. Prints the path of its jar,
# fetching it once from Maven Central with mvn into .tools/s3proxy (git-ignored).
#   scripts/s3proxy.sh            -> /path/to/s3proxy.jar
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=2.6.0
dir="$root/.tools/s3proxy"
jar="$dir/s3proxy-$version-jar-with-dependencies.jar"
if [[ ! -s $jar ]]; then
  command -v java >/dev/null && command -v mvn >/dev/null \
    || { echo "s3proxy: java and mvn are needed (apt-get install default-jre-headless maven; scripts/system-deps.sh does)" >&2; exit 1; }
  mkdir -p "$dir"
  echo "s3proxy: fetching org.gaul:s3proxy:$version" >&2
  mvn -q -B dependency:copy -Dartifact="org.gaul:s3proxy:$version:jar:jar-with-dependencies" -DoutputDirectory="$dir" >&2
fi
echo "$jar"
