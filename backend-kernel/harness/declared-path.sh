#!/usr/bin/env bash
# Print a PATH under which only commands from DECLARED packages are found, so
# that a command installed by hand on this machine fails here, not on a fresh
# CI machine.
#
# usage: declared-path.sh                 build the directory, print the PATH
#        declared-path.sh --explain CMD   which package provides CMD; allowed, and why?
#        declared-path.sh --list-missing  command words of the CI / harness scripts
#                                         found on the normal PATH but not on the
#                                         declared one (prints nothing if all is well)
#
# Allowed packages: those of packages.txt, every package with `Essential: yes`
# or `Priority: required` (on any Debian system), and, transitively, what
# those Depend / Pre-Depend on (what apt installs with --no-install-recommends).
# For a dependency `a | b` that no allowed package satisfies yet, the first
# installed alternative is taken (as apt would); a virtual package counts
# through its installed providers.
#
# The printed PATH is "${CARGO_HOME:-$HOME/.cargo}/bin:$HMM_CACHE_ROOT/declared-bin":
# the machine's rustup toolchain (cargo, rustc, rustfmt, clippy, cargo-fuzz;
# not an apt package, and first on the normal PATH too, ahead of Debian's
# /usr/bin/cargo) and then a directory of symlinks to every executable in
# /usr/sbin, /usr/bin, /sbin, /bin that an allowed package ships (per
# $HMM_DPKG_ADMINDIR/info/*.list, default /var/lib/dpkg). Links managed by
# update-alternatives (cc, awk, yacc, ...) count if the package behind the
# current choice is allowed; otherwise the highest-priority choice from an
# allowed package is linked instead (what a fresh machine would have).
# /usr/lib/llvm-*/bin is not needed: clang, lld and llvm install /usr/bin links.
#
# $HMM_CACHE_ROOT/declared-bin is a symlink to a directory built afresh on
# each call (in a temporary directory, then renamed over the symlink), so
# concurrent calls do not disturb each other or a running user.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/env.sh"
repo="$(cd "$here/../.." && pwd)"

dpkg_dir="${HMM_DPKG_ADMINDIR:-/var/lib/dpkg}"
packages_txt="$HMM_HARNESS_DIR/packages.txt"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
link="$HMM_CACHE_ROOT/declared-bin"
bin_dirs=(/usr/sbin /usr/bin /sbin /bin)        # PATH order
# The normal system PATH: where --explain / --list-missing look for commands
# that the declared PATH lacks (even when run under the declared PATH).
full_path="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

mode=path cmd=""
case "${1:-}" in
    "") ;;
    --explain) mode=explain; cmd="${2:?usage: declared-path.sh --explain CMD}" ;;
    --list-missing) mode=list ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac

# /bin -> usr/bin etc. on merged-/usr systems: dpkg's lists may name either.
merged=""
for d in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$d" ] && [ "$(readlink -f "/$d")" = "/usr/$d" ]; then merged="$merged $d"; fi
done

# The package names of packages.txt (bpo: stripped, $HMM_KERNEL_PKG expanded).
declared_packages() {
    sed 's/#.*//' "$packages_txt" | awk -v kpkg="$HMM_KERNEL_PKG" '
        NF == 0 { next }
        NF > 1 { printf "packages.txt:%d: one package per line: %s\n", NR, $0 > "/dev/stderr"; bad = 1; next }
        { p = $1; sub(/^bpo:/, "", p); if (p == "$HMM_KERNEL_PKG") p = kpkg; print p }
        END { exit bad }'
}

# ---------------------------------------------------------------- packages
# Prints "pkg<TAB>reason<TAB>parent<TAB>dependency" for every allowed package;
# reason is declared / essential / required / dependency (of parent).
resolve_allowed() {
    local decl
    decl="$(declared_packages | tr '\n' ' ')"
    awk -v decl="$decl" '
    function val(l) { sub(/^[^:]*:[ \t]*/, "", l); return l }
    function clean(a) {                # "foo:any (>= 1) [amd64]" -> "foo"
        gsub(/\([^)]*\)|\[[^]]*\]|<[^>]*>/, "", a)
        gsub(/[ \t]/, "", a)
        sub(/:.*/, "", a)
        return a
    }
    function cands(a,   c) {           # installed packages that satisfy name a
        c = (a in inst) ? a : ""
        if (a in prov) c = c prov[a]
        return c
    }
    function allow(p, reason, parent, dep) {
        if (p in allowed) return
        allowed[p] = 1; why[p] = reason; par[p] = parent; pdep[p] = dep
        order[++nallowed] = p
        queue[++qt] = p
    }
    # 1 if the group (alternatives joined by "|") is satisfied by an allowed package
    function satisfied(g,   n, alts, j, m, cs, k) {
        n = split(g, alts, "|")
        for (j = 1; j <= n; j++) {
            m = split(cands(clean(alts[j])), cs, " ")
            for (k = 1; k <= m; k++) if (cs[k] in allowed) return 1
        }
        return 0
    }
    # allow the candidates of the first alternative that has any
    function choose(p, g,   n, alts, j, m, cs, k) {
        n = split(g, alts, "|")
        for (j = 1; j <= n; j++) {
            m = split(cands(clean(alts[j])), cs, " ")
            if (m == 0) continue
            for (k = 1; k <= m; k++) allow(cs[k], "dependency", p, g)
            return
        }
        unsat[p] = unsat[p] (unsat[p] == "" ? "" : ", ") g
    }
    function expand(p,   ng, groups, i, g, n, alts, j, m, cs, k, tot, one) {
        ng = split(deps[p], groups, ",")
        for (i = 1; i <= ng; i++) {
            g = groups[i]
            if (g ~ /^[ \t]*$/) continue
            if (satisfied(g)) continue
            tot = 0
            n = split(g, alts, "|")
            for (j = 1; j <= n; j++) {
                m = split(cands(clean(alts[j])), cs, " ")
                for (k = 1; k <= m; k++) { tot++; one = cs[k] }
            }
            if (tot == 1) allow(one, "dependency", p, g)
            else { dgroup[++nd] = g; dparent[nd] = p }   # a choice: decide later
        }
    }
    BEGIN { RS = ""; FS = "\n" }
    {
        pkg = st = ess = pri = dep = pre = pv = ""
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^Package:/) pkg = val($i)
            else if ($i ~ /^Status:/) st = val($i)
            else if ($i ~ /^Essential:/) ess = val($i)
            else if ($i ~ /^Priority:/) pri = val($i)
            else if ($i ~ /^Depends:/) dep = val($i)
            else if ($i ~ /^Pre-Depends:/) pre = val($i)
            else if ($i ~ /^Provides:/) pv = val($i)
        }
        if (pkg == "" || st !~ / installed$/) next
        inst[pkg] = 1
        deps[pkg] = deps[pkg] "," pre "," dep
        if (ess == "yes") essential[pkg] = 1
        if (pri == "required") required[pkg] = 1
        n = split(pv, vs, ",")
        for (j = 1; j <= n; j++) { v = clean(vs[j]); if (v != "") prov[v] = prov[v] " " pkg }
    }
    END {
        n = split(decl, D, " ")
        for (j = 1; j <= n; j++) {
            if (D[j] in inst) allow(D[j], "declared", "", "")
            else printf "declared-path.sh: declared package %s is not installed (run setup.sh)\n", D[j] > "/dev/stderr"
        }
        for (p in essential) allow(p, "essential", "", "")
        for (p in required) allow(p, "required", "", "")
        qh = 1
        while (1) {
            while (qh <= qt) expand(queue[qh++])
            progress = 0
            for (k = 1; k <= nd && !progress; k++) {
                if (done[k]) continue
                done[k] = 1
                if (satisfied(dgroup[k])) continue
                choose(dparent[k], dgroup[k])
                progress = 1
            }
            if (!progress) break
        }
        for (j = 1; j <= nallowed; j++) {
            p = order[j]; d = pdep[p]; gsub(/^[ \t]+|[ \t]+$/, "", d)
            print p "\t" why[p] "\t" par[p] "\t" d
        }
        for (p in unsat) printf "declared-path.sh: note: %s depends on %s, none installed\n", p, unsat[p] > "/dev/stderr"
    }' "$dpkg_dir/status"
}

# ---------------------------------------------------------------- commands
# Reads the allowed packages (file $1) and prints "name<TAB>target<TAB>pkg<TAB>how"
# for every command to link, and "!name<TAB>link<TAB>choice<TAB>how" for
# alternatives links that stay out.
resolve_commands() {
    local allowed_file="$1" real_dirs=() d seen=" "
    for d in "${bin_dirs[@]}"; do
        [ -d "$d" ] && [ ! -L "$d" ] || continue
        case "$seen" in *" $(readlink -f "$d") "*) continue ;; esac
        seen="$seen$(readlink -f "$d") "
        real_dirs+=("$d")
    done
    # links into /etc/alternatives in the bin dirs, with the current choice
    local altlinks altcur
    altlinks="$(find "${real_dirs[@]}" -maxdepth 1 -type l -lname '/etc/alternatives/*' -printf '%p\t%l\n')"
    altcur="$(find /etc/alternatives -maxdepth 1 -type l -printf '%p\t%l\n')"
    # every link of the alternatives database: "link<TAB>choice<TAB>priority<TAB>target"
    local altdb=""
    if compgen -G "$dpkg_dir/alternatives/*" > /dev/null; then
        altdb="$(awk '
            FNR == 1 { st = "master"; ns = 0; next }
            st == "master" { link[0] = $0; st = "slaves"; k = 0; next }
            st == "slaves" {
                if ($0 == "") { st = "choice"; next }
                if (k++ % 2 == 1) link[++ns] = $0
                next
            }
            st == "choice" { if ($0 == "") { st = "end"; next } choice = $0; st = "prio"; next }
            st == "prio" {
                prio = $0; print link[0] "\t" choice "\t" prio "\t" choice
                si = 0; st = (ns > 0) ? "starget" : "choice"; next
            }
            st == "starget" {
                si++; if ($0 != "") print link[si] "\t" choice "\t" prio "\t" $0
                if (si == ns) st = "choice"
                next
            }' "$dpkg_dir"/alternatives/*)"
    fi
    local diversions=/dev/null
    [ -f "$dpkg_dir/diversions" ] && diversions="$dpkg_dir/diversions"
    awk -F '\t' -v merged="$merged" -v info="$dpkg_dir/info" \
        -v altlinks="$altlinks" -v altcur="$altcur" -v altdb="$altdb" \
        -v diversions="$diversions" -v lists="$(printf '%s\n' "$dpkg_dir"/info/*.list)" '
    function norm(p,   n, i, d) {
        n = split(merged, ms, " ")
        for (i = 1; i <= n; i++) {
            d = "/" ms[i]
            if (p == d || substr(p, 1, length(d) + 1) == d "/") return "/usr" p
        }
        return p
    }
    function base(p) { sub(/.*\//, "", p); return p }
    function dirprio(p) {              # PATH order of the bin dir of p, 0 = none
        if (p ~ /^\/usr\/sbin\/[^\/]+$/) return 1
        if (p ~ /^\/usr\/bin\/[^\/]+$/) return 2
        if (p ~ /^\/sbin\/[^\/]+$/) return 3
        if (p ~ /^\/bin\/[^\/]+$/) return 4
        return 0
    }
    function resolve(p, hops) {        # follow /etc/alternatives-style links we know
        while (hops-- > 0 && (p in cur)) p = cur[p]
        return p
    }
    BEGIN {
        n = split(lists, L, "\n")
        for (i = 1; i <= n; i++) { p = base(L[i]); sub(/\.list$/, "", p); sub(/:.*/, "", p); listof[p] = listof[p] "\n" L[i] }
        n = split(altcur, A, "\n")
        for (i = 1; i <= n; i++) if (split(A[i], f, "\t") == 2) { cur[f[1]] = f[2]; need[norm(f[2])] = 1 }
        n = split(altdb, A, "\n")
        for (i = 1; i <= n; i++) if (split(A[i], f, "\t") == 4) {
            k = norm(f[1]); nalt[k]++; achoice[k, nalt[k]] = norm(f[2]); aprio[k, nalt[k]] = f[3] + 0; atarget[k, nalt[k]] = f[4]
            need[norm(f[2])] = 1
        }
        while ((getline line < diversions) > 0) {
            from = line; getline to < diversions; getline by < diversions
            divby[norm(from)] = by
        }
    }
    { allowed[$1] = 1 }
    END {
        for (p in allowed) {
            m = split(listof[p], F, "\n")
            for (i = 1; i <= m; i++) {
                if (F[i] == "") continue
                while ((getline path < F[i]) > 0) {
                    np = norm(path)
                    if (np in need) owner[np] = p
                    dp = dirprio(path)
                    if (!dp) continue
                    if ((np in divby) && divby[np] != p) continue   # diverted away by another package
                    nm = base(path)
                    if (!(nm in bprio) || dp < bprio[nm]) { bprio[nm] = dp; btarget[nm] = path; bpkg[nm] = p }
                }
                close(F[i])
            }
        }
        for (nm in btarget) print nm "\t" btarget[nm] "\t" bpkg[nm] "\tfile of the package"
        n = split(altlinks, A, "\n")
        for (i = 1; i <= n; i++) {
            if (split(A[i], f, "\t") != 2) continue
            l = f[1]; nm = base(l); nl = norm(l)
            if (nm in btarget) continue                 # a package file wins
            c = norm(resolve(f[2], 3))
            if (c in owner) { print nm "\t" l "\t" owner[c] "\talternative, current choice " c; continue }
            best = 0
            for (j = 1; j <= nalt[nl]; j++)
                if ((achoice[nl, j] in owner) && (!best || aprio[nl, j] > aprio[nl, best])) best = j
            if (best) print nm "\t" atarget[nl, best] "\t" owner[achoice[nl, best]] "\talternative: the current choice " c " is not allowed; linked to allowed choice " achoice[nl, best]
            else print "!" nm "\t" l "\t" c "\talternative whose choices all come from packages that are not allowed"
        }
    }' "$allowed_file"
}

# ---------------------------------------------------------------- build
build() {
    mkdir -p "$HMM_CACHE_ROOT"
    local new
    new="$(mktemp -d "$HMM_CACHE_ROOT/declared-bin.XXXXXX")"
    chmod 755 "$new"
    resolve_allowed > "$new/.packages"
    resolve_commands "$new/.packages" > "$new/.commands.all"
    local name target pkg how plain=()
    while IFS=$'\t' read -r name target pkg how; do
        case "$name" in '!'*) continue ;; esac
        [ -x "$target" ] && [ ! -d "$target" ] || continue
        if [ "${target##*/}" = "$name" ]; then
            plain+=("$target")
        else
            ln -s "$target" "$new/$name"
        fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$target" "$pkg" "$how"
    done < "$new/.commands.all" > "$new/.commands"
    [ "${#plain[@]}" -eq 0 ] || printf '%s\0' "${plain[@]}" | xargs -0 ln -s -t "$new" --
    [ -x "$new/sh" ] && [ -x "$new/bash" ] || hmm_die "declared-bin: no sh/bash in $new (is $dpkg_dir a dpkg database?)"
    # Swap atomically: rename a fresh symlink over the old one.
    [ ! -d "$link" ] || [ -L "$link" ] || rm -rf "$link"
    ln -s "$(basename "$new")" "$new.link"
    mv -T "$new.link" "$link"
    # Directories of earlier calls: nothing points at them any more.
    find "$HMM_CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -name 'declared-bin.??????' \
        ! -name "$(basename "$new")" -mmin +5 -exec rm -rf {} + 2>/dev/null || true
    built="$new"
}

declared_path="$cargo_bin:$link"

owner_of() {  # owner_of PATH: the packages shipping PATH, else its final target
    local p d args=() found=""
    for p in "$1" "$(readlink -f "$1")"; do
        args=(-e "$p")
        for d in $merged; do
            case "$p" in "/usr/$d/"*) args+=(-e "/${p#/usr/}") ;; "/$d/"*) args+=(-e "/usr$p") ;; esac
        done
        found="$({ grep -lFx "${args[@]}" "$dpkg_dir"/info/*.list 2>/dev/null || true; } \
            | sed 's|.*/||; s|\.list$||; s|:.*||' | sort -u | paste -sd' ' -)"
        [ -z "$found" ] || break
    done
    echo "$found"
}

why_chain() {  # why_chain PKG: "pkg: reason <- parent: reason ..." from .packages
    awk -F '\t' -v p="$1" '
        { why[$1] = $2; par[$1] = $3; dep[$1] = $4 }
        END {
            for (n = 0; n < 50 && p != ""; n++) {
                if (why[p] == "declared") { print "    " p ": declared in backend-kernel/harness/packages.txt"; break }
                if (why[p] == "essential") { print "    " p ": Essential: yes (on every Debian system)"; break }
                if (why[p] == "required") { print "    " p ": Priority: required (on every Debian system)"; break }
                print "    " p ": dependency of " par[p] " (Depends: " dep[p] ")"
                p = par[p]
            }
        }' "$built/.packages"
}

explain() {
    local c="$1" line name target pkg how
    case "$(type -t -- "$c" 2>/dev/null || true)" in
        builtin|keyword) echo "$c: shell builtin/keyword (always there)"; return 0 ;;
    esac
    line="$(awk -F '\t' -v c="$c" '$1 == c' "$built/.commands")"
    if [ -x "$cargo_bin/$c" ] && [ ! -d "$cargo_bin/$c" ]; then
        echo "$c: ALLOWED: $cargo_bin/$c (the machine's rustup toolchain / cargo install, not an apt package)"
        [ -z "$line" ] || echo "    (it shadows $link/$c -> $(cut -f2 <<< "$line"), package $(cut -f3 <<< "$line"))"
        return 0
    fi
    if [ -n "$line" ]; then
        IFS=$'\t' read -r name target pkg how <<< "$line"
        echo "$c: ALLOWED: $link/$c -> $target (package $pkg; $how)"
        why_chain "$pkg"
        return 0
    fi
    local found
    found="$(describe_found "$c")"
    if [ -z "$found" ]; then
        echo "$c: NOT FOUND on any PATH here"
        return 1
    fi
    echo "$c: NOT ALLOWED (not on the declared PATH). Found here:"
    sed 's/^/    /' <<< "$found"
    echo "    To allow it, add the package to backend-kernel/harness/packages.txt."
    return 1
}

# describe_found CMD: one line per distinct CMD on the normal PATH, with the
# package it comes from.
describe_found() {
    local c="$1" p r seen=" " owners o
    while IFS= read -r p; do
        r="$(readlink -f "$p")"
        case "$seen" in *" $r "*) continue ;; esac
        seen="$seen$r "
        owners="$(owner_of "$p")"
        if [ -z "$owners" ]; then
            echo "$p: in no Debian package (installed by hand?), a fresh machine lacks it"
            continue
        fi
        for o in $owners; do
            if awk -F '\t' -v p="$o" '$1 == p { f = 1 } END { exit !f }' "$built/.packages"; then
                echo "$p: package $o, allowed, but the command is not among its files in ${bin_dirs[*]}"
            elif [ -L "$p" ] && [[ "$(readlink "$p")" == /etc/alternatives/* ]]; then
                echo "$p: alternative, current choice $r from package $o; no choice comes from an allowed package"
            else
                echo "$p: package $o, which is not declared, not Essential/required, and no allowed package depends on it"
            fi
        done
    done < <(PATH="$full_path" type -a -P -- "$c" || true)
}

# ---------------------------------------------------------------- scan
# Bash scripts whose commands run on the host (the VM's /bin/sh scripts, e.g.
# backend-kernel/vm/guest.sh, run under busybox and are skipped).
scan_files() {
    local f
    for f in "$repo"/.ci/* "$repo"/backend-kernel/harness/*.sh "$repo"/backend-kernel/vm/*.sh \
             "$repo"/backend-hypervisor/firmware/*.sh "$repo"/fuzz/*.sh "$repo"/benches/*.sh; do
        [ -f "$f" ] || continue
        if head -n1 "$f" | grep -q '^#!.*bash' || grep -q '^# shellcheck shell=bash' "$f"; then
            echo "$f"
        fi
    done
}

# Best-effort static scan: prints "C<TAB>word<TAB>file:line" for each word in
# command position (start of a line, after | || && ; ( $( <( `, after
# assignments, keywords and prefixes such as exec/env/timeout/xargs, and the
# first element of an array assignment such as cmd=(qemu-system-x86_64 ...))
# and "F<TAB>name" for each function defined. Skips comments, quoted strings
# (but not $(...) inside double quotes), here-documents, [[ ]], arithmetic,
# redirection targets and case patterns.
scan_commands() {
    awk -v root="$repo/" '
    function push(t, close_) { d++; ct[d] = t; cl[d] = close_; W[d] = ""; WQ[d] = 0; CP[d] = (t == "cmd"); RP[d] = 0; PF[d] = ""; PS[d] = 0; PD[d] = 0; FNP[d] = 0; ARR[d] = 0; AP[d] = 0 }
    function wb(   k) { for (k = d; k > 0 && ct[k] != "cmd" && ct[k] != "dbr"; k--); return k }
    function addw(s, q,   k) { k = wb(); if (W[k] == "") WL[k] = ln; W[k] = W[k] s; if (q) WQ[k] = 1 }
    function peek(o) { return substr(T, i + o, 1) }
    function setcp() { CP[d] = 1; PF[d] = ""; PS[d] = 0; RP[d] = 0 }
    function incase(   ) { return nc > 0 && CD[nc] == d }
    function endword(   w, q) {
        w = W[d]; q = WQ[d]; W[d] = ""; WQ[d] = 0
        if (w == "") return
        if (ct[d] == "dbr") { if (w == "]]") { d--; CP[d] = 0 } return }
        if (RP[d]) { RP[d] = 0; return }
        if (incase()) {
            if (CS[nc] == "hdr") { if (w == "in") CS[nc] = "pat"; return }
            if (CS[nc] == "pat") { if (w == "esac") { nc--; CP[d] = 0 } return }
            if (CP[d] && w == "esac") { nc--; CP[d] = 0; return }
        }
        if (FNP[d]) { FNP[d] = 0; print "F\t" w; return }
        if (!CP[d]) return
        if (PS[d]) { PS[d] = 0; return }
        if (PF[d] == "" && w ~ /^(if|then|else|elif|do|while|until|!|\{|time)$/) return
        if (PF[d] == "" && w ~ /^(fi|done|\}|esac|for|select)$/) { CP[d] = 0; return }
        if (PF[d] == "" && w == "case") { nc++; CS[nc] = "hdr"; CD[nc] = d; CP[d] = 0; return }
        if (PF[d] == "" && w == "function") { FNP[d] = 1; CP[d] = 0; return }
        if (PF[d] == "" && w == "[[") { push("dbr", ""); return }
        if (w ~ /^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=/) return
        if (w == "$SUDO") return
        if (PF[d] != "") {
            if (w ~ /^-/) { if ((PF[d] SUBSEP w) in OPTARG) PS[d] = 1; return }
            if (PF[d] == "timeout" && !PD[d]) { PD[d] = 1; return }
        }
        if (q || w ~ /[\/=]/ || w ~ /^-/ || w ~ /^[0-9]+$/) { CP[d] = 0; PF[d] = ""; return }
        print "C\t" w "\t" file ":" WL[d]
        if (w ~ /^(exec|command|builtin|nohup|nice|env|timeout|xargs|sudo|stdbuf|ionice|setsid)$/) { PF[d] = w; PD[d] = 0 }
        else { CP[d] = 0; PF[d] = "" }
    }
    function squote(   j, s) {        # at a single quote: skip the string
        j = index(substr(T, i + 1), "\047")
        if (j == 0) { i = n + 1; return }
        s = substr(T, i + 1, j - 1); ln += gsub(/\n/, "", s)
        i += j + 1
    }
    function dollar() {                # at "$": push what follows, or step over it
        if (peek(1) == "(" && peek(2) == "(") { push("arith", ""); i += 3 }
        else if (peek(1) == "(") { push("cmd", ")"); i += 2 }
        else if (peek(1) == "{") { push("param", ""); i += 2 }
        else if (peek(1) == "\047") { i++; squote() }
        else i++
    }
    function heredoc(   strip, delim, c) {   # at "<<": read the delimiter
        i += 2; strip = 0
        if (peek(0) == "-") { strip = 1; i++ }
        while (peek(0) == " " || peek(0) == "\t") i++
        delim = ""
        while (i <= n) {
            c = peek(0)
            if (c == "\047" || c == "\"") { j = index(substr(T, i + 1), c); delim = delim substr(T, i + 1, j - 1); i += j + 1; continue }
            if (c == "\\") { delim = delim peek(1); i += 2; continue }
            if (c ~ /[ \t\n;|&<>()]/) break
            delim = delim c; i++
        }
        HD[++nh] = delim; HS[nh] = strip
    }
    function skip_heredocs(   k, e, l) {      # at the start of a line
        for (k = 1; k <= nh; k++) {
            while (i <= n) {
                e = index(substr(T, i), "\n")
                if (e == 0) { l = substr(T, i); i = n + 1 } else { l = substr(T, i, e - 1); i += e }
                ln++
                if (HS[k]) sub(/^\t+/, "", l)
                if (l == HD[k]) break
            }
        }
        nh = 0
    }
    function lex(   c, k) {
        n = length(T); i = 1; ln = 1; d = 0; nc = 0; nh = 0
        ct[0] = "cmd"; cl[0] = ""; W[0] = ""; WQ[0] = 0; CP[0] = 1; RP[0] = 0; PF[0] = ""; PS[0] = 0; FNP[0] = 0; ARR[0] = 0
        while (i <= n) {
            c = peek(0)
            if (ct[d] == "dq") {
                if (c == "\\") { if (peek(1) == "\n") ln++; i += 2 }
                else if (c == "\"") { d--; i++ }
                else if (c == "$") dollar()
                else if (c == "`") { push("cmd", "`"); i++ }
                else { if (c == "\n") ln++; i++ }
                continue
            }
            if (ct[d] == "param") {
                if (c == "}") { d--; i++ }
                else if (c == "\\") i += 2
                else if (c == "\047") squote()
                else if (c == "\"") { push("dq", ""); i++ }
                else if (c == "$") dollar()
                else { if (c == "\n") ln++; i++ }
                continue
            }
            if (ct[d] == "arith") {
                if (c == "(") { AP[d]++; i++ }
                else if (c == ")") {
                    if (AP[d] > 0) { AP[d]--; i++ }
                    else { d--; i += (peek(1) == ")") ? 2 : 1; if (ct[d] == "cmd" && W[d] == "") CP[d] = 0 }
                }
                else if (c == "$") dollar()
                else if (c == "\"") { push("dq", ""); i++ }
                else { if (c == "\n") ln++; i++ }
                continue
            }
            # word-bearing contexts: cmd (top level, subshell, $( ), <( ), ` `, array) and [[ ]]
            if (c == " " || c == "\t") { endword(); i++; continue }
            if (c == "\n") {
                endword(); i++; ln++
                if (ct[d] == "cmd" && !ARR[d]) { setcp(); if (nh > 0) skip_heredocs() }
                continue
            }
            if (c == "#" && W[d] == "") { while (i <= n && peek(0) != "\n") i++; continue }
            if (c == "\\") { if (peek(1) == "\n") { ln++; i += 2 } else { addw(peek(1), 1); i += 2 } continue }
            if (c == "\047") { addw("\047", 1); squote(); continue }
            if (c == "\"") { addw("\"", 1); push("dq", ""); i++; continue }
            if (c == "$") { addw("$", 1); dollar(); continue }
            if (ct[d] == "dbr") {
                if (c ~ /[()<>|&;]/) { endword(); i++; continue }
                addw(c, 0); i++; continue
            }
            if (c == "`") {
                if (cl[d] == "`") { endword(); d--; i++ } else { addw("`", 1); push("cmd", "`"); i++ }
                continue
            }
            if (c == "(") {
                if (incase() && CS[nc] == "pat") { i++; continue }
                if (W[d] ~ /=$/) { push("cmd", ")"); ARR[d] = 1; i++; continue }
                if (W[d] == "" && peek(1) == "(") { push("arith", ""); i += 2; continue }
                if (W[d] == "") { push("cmd", ")"); i++; continue }
                for (k = 1; peek(k) == " " || peek(k) == "\t"; k++);
                if (peek(k) == ")") {
                    if (CP[d] || FNP[d]) { print "F\t" W[d]; FNP[d] = 0 }
                    W[d] = ""; WQ[d] = 0; CP[d] = 1; i += k + 1; continue
                }
                addw("(", 1); i++; continue
            }
            if (c == ")") {
                if (incase() && CS[nc] == "pat") { endword(); CS[nc] = "body"; setcp(); i++; continue }
                endword()
                if (cl[d] == ")") { d--; if (W[d] == "") CP[d] = 0 }
                i++; continue
            }
            if (c == ";") {
                endword()
                if (peek(1) == ";" || peek(1) == "&") {
                    i += 2; if (peek(0) == "&") i++
                    if (nc > 0 && CD[nc] == d) CS[nc] = "pat"
                } else i++
                setcp(); continue
            }
            if (c == "|") {
                endword()
                if (incase() && CS[nc] == "pat") { i++; continue }
                i += (peek(1) == "|" || peek(1) == "&") ? 2 : 1
                setcp(); continue
            }
            if (c == "&") {
                endword()
                if (peek(1) == "&") { i += 2; setcp() }
                else if (peek(1) == ">") { i += 2; if (peek(0) == ">") i++; RP[d] = 1 }
                else { i++; setcp() }
                continue
            }
            if (c == "<" || c == ">") {
                if (W[d] ~ /^[0-9]+$/ || W[d] ~ /^\{[A-Za-z_][A-Za-z0-9_]*\}$/) { W[d] = ""; WQ[d] = 0 }
                else endword()
                if (peek(1) == "(") { addw(c "(", 1); push("cmd", ")"); i += 2; continue }
                if (substr(T, i, 3) == "<<<") { i += 3; RP[d] = 1; continue }
                if (substr(T, i, 2) == "<<") { heredoc(); continue }
                i++
                if (peek(0) == ">" || peek(0) == "|" || (c == "<" && peek(0) == ">")) i++
                if (peek(0) == "&") {
                    i++
                    if (peek(0) == "-") { i++; continue }
                    if (peek(0) ~ /[0-9]/) { while (peek(0) ~ /[0-9]/) i++; continue }
                }
                RP[d] = 1; continue
            }
            addw(c, 0); i++
        }
        endword()
    }
    BEGIN {
        OPTARG["timeout", "-k"] = OPTARG["timeout", "-s"] = 1
        OPTARG["xargs", "-n"] = OPTARG["xargs", "-P"] = OPTARG["xargs", "-I"] = OPTARG["xargs", "-L"] = 1
        OPTARG["xargs", "-d"] = OPTARG["xargs", "-s"] = OPTARG["xargs", "-a"] = OPTARG["xargs", "-E"] = 1
        OPTARG["nice", "-n"] = OPTARG["env", "-u"] = OPTARG["env", "-C"] = OPTARG["env", "-S"] = 1
        OPTARG["sudo", "-u"] = OPTARG["sudo", "-g"] = OPTARG["ionice", "-c"] = OPTARG["ionice", "-n"] = 1
        for (a = 1; a < ARGC; a++) {
            file = ARGV[a]; T = ""
            while ((getline line < file) > 0) T = T line "\n"
            close(file)
            if (index(file, root) == 1) file = substr(file, length(root) + 1)
            lex()
        }
        exit
    }' "$@"
}

list_missing() {
    local files=() builtins
    mapfile -t files < <(scan_files)
    builtins=" $(compgen -b | tr '\n' ' ') $(compgen -k | tr '\n' ' ') "
    local scan funcs
    scan="$(scan_commands "${files[@]}")"
    funcs=" $(awk -F '\t' '$1 == "F" { printf "%s ", $2 }' <<< "$scan") "
    local word where path unresolved=()
    while IFS=$'\t' read -r word where; do
        case "$builtins$funcs" in *" $word "*) continue ;; esac
        [[ "$word" =~ ^[A-Za-z0-9_][A-Za-z0-9_.+-]*$ ]] || continue
        PATH="$declared_path" type -P -- "$word" > /dev/null && continue
        path="$(PATH="$full_path" type -P -- "$word" || true)"
        if [ -z "$path" ]; then
            unresolved+=("$word ($where)")
            continue
        fi
        echo "$word: not on the declared PATH; used at $where"
        describe_found "$word" | sed 's/^/    /'
    done < <(awk -F '\t' '$1 == "C" { if (!($2 in at)) { order[++n] = $2; at[$2] = $3 } else if (length(at[$2]) < 200) at[$2] = at[$2] ", " $3 }
                           END { for (k = 1; k <= n; k++) print order[k] "\t" at[order[k]] }' <<< "$scan")
    if [ "${#unresolved[@]}" -gt 0 ]; then
        printf 'declared-path.sh: note: command words found on no PATH (not checked; VM-side or a scanner false positive?): %s\n' \
            "${unresolved[*]}" >&2
    fi
}

# ---------------------------------------------------------------- main
built=""
build
case "$mode" in
    path) echo "$declared_path" ;;
    explain) explain "$cmd" ;;
    list) list_missing ;;
esac
