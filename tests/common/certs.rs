//! Test certificates, made with the `openssl` command line for each test: a private CA, server
//! certificates for given names (ECDSA P-256 or RSA-2048), client certificates for mTLS. Nothing
//! is checked in, so nothing expires in the repository.

use super::proc::TempDir;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Validity of every certificate: a year, like a real one (testssl.sh rates a certificate that
/// expires within 30 days as a HIGH finding).
const DAYS: &str = "365";

/// The key type of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

impl KeyKind {
    fn newkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Rsa2048 => &["-newkey", "rsa:2048"],
        }
    }
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A private certificate authority in a directory that lives as long as it does.
pub struct Ca {
    pub dir: TempDir,
    /// The CA's own certificate (PEM): what clients trust (`curl --cacert`) and what
    /// `tls client_ca` names.
    pub cert: PathBuf,
    key: PathBuf,
    name: String,
    serial: u32,
}

impl Ca {
    /// A new ECDSA CA called `name` (the subject's CN).
    pub fn new(name: &str) -> Ca {
        let dir = TempDir::new("ca");
        let cert = dir.join(&format!("{name}.pem"));
        let key = dir.join(&format!("{name}.key"));
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                DAYS,
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-keyout",
                path(&key),
                "-out",
                path(&cert),
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca { dir, cert, key, name: name.to_string(), serial: 0 }
    }

    /// A server certificate for `names` (the first is the CN; all are DNS names in the
    /// subjectAltName, with 127.0.0.1 as an IP name too). It names a CRL, as public ones do;
    /// nothing ever fetches it.
    pub fn server(&mut self, names: &[&str], kind: KeyKind) -> Issued {
        let mut san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        san.push("IP:127.0.0.1".into());
        self.issue(
            names[0],
            kind,
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\ncrlDistributionPoints=URI:http://127.0.0.1/{}.crl\n",
                san.join(","),
                self.name
            ),
        )
    }

    /// A client certificate (for `tls client_ca`) with CN `name`.
    pub fn client(&mut self, name: &str) -> Issued {
        self.issue(name, KeyKind::EcdsaP256, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&mut self, cn: &str, kind: KeyKind, ext: &str) -> Issued {
        self.serial += 1;
        let stem = format!("{}-{}-{}", self.name, self.serial, cn.replace('*', "star"));
        let key = self.dir.join(&format!("{stem}.key"));
        let csr = self.dir.join(&format!("{stem}.csr"));
        let cert = self.dir.join(&format!("{stem}.pem"));
        let extfile = self.dir.join(&format!("{stem}.ext"));
        fs::write(&extfile, format!("basicConstraints=critical,CA:FALSE\n{ext}")).expect("write extfile");
        let mut req = vec!["req", "-new", "-nodes"];
        req.extend_from_slice(kind.newkey_args());
        let subj = format!("/CN={cn}");
        req.extend_from_slice(&["-keyout", path(&key), "-out", path(&csr), "-subj", &subj]);
        openssl(&self.dir, &req);
        let serial = self.serial.to_string();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-days",
                DAYS,
                "-in",
                path(&csr),
                "-CA",
                path(&self.cert),
                "-CAkey",
                path(&self.key),
                "-set_serial",
                &serial,
                "-extfile",
                path(&extfile),
                "-out",
                path(&cert),
            ],
        );
        Issued { cert, key }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("run openssl");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The subject CN of the certificate in PEM file `cert`.
pub fn subject_cn(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "multiline", "-in", path(cert)])
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("commonName").map(|v| v.trim_start_matches([' ', '=']).trim().to_string()))
        .unwrap_or_else(|| panic!("no CN in {}: {text}", cert.display()))
}
